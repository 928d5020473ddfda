//! The in-memory side of the connection registry: which connections (QUIC
//! or HTTP/2, see [`Transport`]) this edge holds for each tunnel, whether they are draining, and which
//! configuration version each connector was sent.
//!
//! The durable side (visible at `/connections`) is the store; this one holds
//! what cannot be stored: the connection handles. Every method takes
//! one short lock and never awaits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};

use uuid::Uuid;

use crate::transport::Transport;

/// One registered connection.
#[derive(Debug)]
pub struct LiveConn {
    pub id: Uuid,
    pub tunnel_id: Uuid,
    pub connector_id: Uuid,
    pub conn_index: u8,
    pub conn: Transport,
    /// Set by `unregisterConnection`: no new requests, in-flight ones finish.
    draining: AtomicBool,
}

impl LiveConn {
    pub fn new(
        id: Uuid,
        tunnel_id: Uuid,
        connector_id: Uuid,
        conn_index: u8,
        conn: Transport,
    ) -> Self {
        LiveConn {
            id,
            tunnel_id,
            connector_id,
            conn_index,
            conn,
            draining: AtomicBool::new(false),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Usable for new requests: not draining and not closed.
    pub fn is_usable(&self) -> bool {
        !self.is_draining() && !self.conn.is_closed()
    }
}

#[derive(Default)]
struct TunnelEntry {
    conns: Vec<Arc<LiveConn>>,
    /// Round-robin position for request spreading.
    cursor: usize,
    /// Per connector: the configuration version last pushed (or being
    /// pushed), so several HA connections do not each trigger a push.
    pushed: HashMap<Uuid, i64>,
}

#[derive(Default)]
struct Inner {
    tunnels: HashMap<Uuid, TunnelEntry>,
    by_id: HashMap<Uuid, Uuid>,
}

/// The live registry. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection. Returns the connections it replaces: same
    /// connector and index (a reconnect), which the caller closes.
    pub fn insert(&self, conn: Arc<LiveConn>) -> Vec<Arc<LiveConn>> {
        let mut g = self.lock();
        let inner = &mut *g;
        let entry = inner.tunnels.entry(conn.tunnel_id).or_default();
        let mut replaced = Vec::new();
        entry.conns.retain(|c| {
            let same_slot = c.connector_id == conn.connector_id && c.conn_index == conn.conn_index;
            if same_slot || c.id == conn.id {
                replaced.push(c.clone());
                false
            } else {
                true
            }
        });
        for r in &replaced {
            inner.by_id.remove(&r.id);
        }
        inner.by_id.insert(conn.id, conn.tunnel_id);
        entry.conns.push(conn);
        replaced
    }

    /// Removes a connection; `None` if it is not (or no longer) here.
    pub fn remove(&self, id: Uuid) -> Option<Arc<LiveConn>> {
        let mut g = self.lock();
        let inner = &mut *g;
        let tunnel_id = inner.by_id.remove(&id)?;
        let entry = inner.tunnels.get_mut(&tunnel_id)?;
        let pos = entry.conns.iter().position(|c| c.id == id)?;
        let gone = entry.conns.remove(pos);
        if !entry
            .conns
            .iter()
            .any(|c| c.connector_id == gone.connector_id)
        {
            entry.pushed.remove(&gone.connector_id);
        }
        if entry.conns.is_empty() {
            inner.tunnels.remove(&tunnel_id);
        }
        Some(gone)
    }

    /// Marks a connection draining; false if unknown.
    pub fn set_draining(&self, id: Uuid) -> bool {
        let g = self.lock();
        let Some(t) = g.by_id.get(&id) else {
            return false;
        };
        let Some(c) = g
            .tunnels
            .get(t)
            .and_then(|e| e.conns.iter().find(|c| c.id == id))
        else {
            return false;
        };
        c.draining.store(true, Ordering::Release);
        true
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<LiveConn>> {
        let g = self.lock();
        let t = g.by_id.get(&id)?;
        g.tunnels.get(t)?.conns.iter().find(|c| c.id == id).cloned()
    }

    /// The tunnel's usable connections in the order to try them, starting
    /// at the round-robin position (which advances by one per call).
    pub fn candidates(&self, tunnel_id: Uuid) -> Vec<Arc<LiveConn>> {
        let mut g = self.lock();
        let Some(entry) = g.tunnels.get_mut(&tunnel_id) else {
            return Vec::new();
        };
        let slots: Vec<Slot> = entry
            .conns
            .iter()
            .map(|c| Slot {
                connector_id: c.connector_id,
                conn_index: c.conn_index,
                usable: c.is_usable(),
            })
            .collect();
        let order = selection_order(&slots, entry.cursor);
        entry.cursor = entry.cursor.wrapping_add(1);
        order.into_iter().map(|i| entry.conns[i].clone()).collect()
    }

    /// One usable connection per connector of the tunnel (lowest index
    /// first), for configuration pushes.
    pub fn one_per_connector(&self, tunnel_id: Uuid) -> Vec<Arc<LiveConn>> {
        let g = self.lock();
        let Some(entry) = g.tunnels.get(&tunnel_id) else {
            return Vec::new();
        };
        let mut best: HashMap<Uuid, Arc<LiveConn>> = HashMap::new();
        for c in entry.conns.iter().filter(|c| c.is_usable()) {
            match best.get(&c.connector_id) {
                Some(b) if b.conn_index <= c.conn_index => {}
                _ => {
                    best.insert(c.connector_id, c.clone());
                }
            }
        }
        let mut out: Vec<_> = best.into_values().collect();
        out.sort_by_key(|c| c.connector_id);
        out
    }

    /// Claims the push of `version` to a connector: true when it has not
    /// been pushed (or started) yet, and records it as started.
    pub fn claim_push(&self, tunnel_id: Uuid, connector_id: Uuid, version: i64) -> bool {
        let mut g = self.lock();
        let Some(entry) = g.tunnels.get_mut(&tunnel_id) else {
            return false;
        };
        if !entry.conns.iter().any(|c| c.connector_id == connector_id) {
            return false;
        }
        match entry.pushed.get(&connector_id) {
            Some(&v) if v >= version => false,
            _ => {
                entry.pushed.insert(connector_id, version);
                true
            }
        }
    }

    /// Forgets a failed push so the next trigger tries again.
    pub fn release_push(&self, tunnel_id: Uuid, connector_id: Uuid, version: i64) {
        let mut g = self.lock();
        if let Some(entry) = g.tunnels.get_mut(&tunnel_id)
            && entry.pushed.get(&connector_id) == Some(&version)
        {
            entry.pushed.remove(&connector_id);
        }
    }

    /// Every connection (for shutdown).
    pub fn all(&self) -> Vec<Arc<LiveConn>> {
        let g = self.lock();
        g.tunnels
            .values()
            .flat_map(|e| e.conns.iter().cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What selection needs to know about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub connector_id: Uuid,
    pub conn_index: u8,
    pub usable: bool,
}

/// Indices of the usable slots in the order to try them. The base order
/// interleaves connectors (index 0 of every connector, then index 1, …), so
/// consecutive requests alternate between connectors and connections; the
/// cursor rotates it for round robin, and the rest of the list is the
/// fallback order when a stream cannot be opened.
pub fn selection_order(slots: &[Slot], cursor: usize) -> Vec<usize> {
    let mut usable: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].usable).collect();
    usable.sort_by_key(|&i| (slots[i].conn_index, slots[i].connector_id));
    if !usable.is_empty() {
        let n = usable.len();
        usable.rotate_left(cursor % n);
    }
    usable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(connector: u128, idx: u8, usable: bool) -> Slot {
        Slot {
            connector_id: Uuid::from_u128(connector),
            conn_index: idx,
            usable,
        }
    }

    #[test]
    fn round_robin_interleaves_connectors_and_skips_unusable() {
        let slots = [
            slot(1, 0, true),
            slot(1, 1, true),
            slot(2, 0, true),
            slot(2, 1, false), // draining
        ];
        assert_eq!(selection_order(&slots, 0), vec![0, 2, 1]);
        assert_eq!(selection_order(&slots, 1), vec![2, 1, 0]);
        assert_eq!(selection_order(&slots, 2), vec![1, 0, 2]);
        assert_eq!(selection_order(&slots, 3), vec![0, 2, 1]);
        let firsts: Vec<usize> = (0..6).map(|c| selection_order(&slots, c)[0]).collect();
        assert_eq!(firsts, vec![0, 2, 1, 0, 2, 1]);
        assert!(selection_order(&[slot(1, 0, false)], 5).is_empty());
        assert!(selection_order(&[], 0).is_empty());
    }
}

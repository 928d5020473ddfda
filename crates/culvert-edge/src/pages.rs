//! Error pages the public listener answers with, worded as Cloudflare's
//! edge does, so people (and scripts) recognise them.

use http::StatusCode;

/// Which page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPage {
    /// 530, error 1033: no tunnel for the host, or the tunnel has no
    /// connection ("Argo Tunnel error").
    TunnelUnavailable,
    /// 502: the connector failed or answered something unusable.
    BadGateway,
    /// 524: the connector sent no response in time.
    Timeout,
}

impl ErrorPage {
    pub fn status(self) -> StatusCode {
        match self {
            // 530 is Cloudflare's own code; it is a valid status number.
            ErrorPage::TunnelUnavailable => {
                StatusCode::from_u16(530).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ErrorPage::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorPage::Timeout => StatusCode::from_u16(524).unwrap_or(StatusCode::GATEWAY_TIMEOUT),
        }
    }

    fn texts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ErrorPage::TunnelUnavailable => (
                "Error 1033",
                "Argo Tunnel error",
                "error 1033: the host is not served by a running tunnel, or the tunnel \
                 has no connector connected to this edge. Start cloudflared for this \
                 tunnel or check the hostname's route.",
            ),
            ErrorPage::BadGateway => (
                "Error 502",
                "Bad gateway",
                "The tunnel's connector could not complete the request to the origin.",
            ),
            ErrorPage::Timeout => (
                "Error 524",
                "A timeout occurred",
                "The tunnel's connector did not send a response in time.",
            ),
        }
    }

    /// The HTML body. `host` and `ray` come from the request and are escaped.
    pub fn html(self, host: &str, ray: &str) -> String {
        let (code, title, detail) = self.texts();
        let host = escape(host);
        let ray = escape(ray);
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{host} | {status}: {title}</title>\n</head>\n<body>\n\
             <h1><span>{code}</span> <small>Ray ID: {ray}</small></h1>\n\
             <h2>{title}</h2>\n<p>{detail}</p>\n\
             <p>Host: {host}</p>\n<p>culvert edge</p>\n</body>\n</html>\n",
            status = self.status().as_u16(),
        )
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let p = ErrorPage::TunnelUnavailable;
        assert_eq!(p.status().as_u16(), 530);
        let html = p.html("<x>.test", "0123-LAB");
        assert!(html.contains("Error 1033"));
        assert!(html.contains("error 1033"));
        assert!(html.contains("Argo Tunnel error"));
        assert!(html.contains("&lt;x&gt;.test"));
        assert!(!html.contains("<x>"));
        assert_eq!(ErrorPage::BadGateway.status().as_u16(), 502);
        assert!(ErrorPage::BadGateway.html("h", "r").contains("502"));
        assert_eq!(ErrorPage::Timeout.status().as_u16(), 524);
    }
}

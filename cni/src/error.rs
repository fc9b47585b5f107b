//! The plugin's error: a CNI error code, a message and details, printed as
//! the CNI spec's error result.

use axoneme_api::cni_code;
use serde::Serialize;

/// An error the plugin reports to the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Code 4: a CNI_* variable is missing or invalid.
    pub fn env(msg: impl Into<String>) -> Self {
        CniError::new(cni_code::INVALID_ENV, msg, "")
    }

    /// Code 7: the network configuration is invalid.
    pub fn config(msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError::new(cni_code::INVALID_CONFIG, msg, details)
    }

    /// The error result JSON (CNI spec, "Error"), in `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ErrorResult<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        let r = ErrorResult {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        // Serializing plain strings and a number cannot fail; keep a
        // fallback anyway rather than a panic.
        serde_json::to_string(&r).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"1.0.0","code":{},"msg":"internal error","details":""}}"#,
                self.code
            )
        })
    }

    /// One line for a human reading the runtime's log.
    pub fn one_line(&self) -> String {
        let mut s = format!("error {}: {}", self.code, self.msg);
        if !self.details.is_empty() {
            s.push_str(": ");
            s.push_str(&self.details);
        }
        s.replace('\n', " ")
    }
}

impl From<axoneme_api::ApiError> for CniError {
    /// The agent's codes are already CNI codes: passed through unchanged.
    fn from(e: axoneme_api::ApiError) -> Self {
        CniError::new(e.code, e.msg, e.details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_shape() {
        let e = CniError::new(7, "bad \"name\"", "");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("0.4.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "0.4.0", "code": 7, "msg": "bad \"name\"", "details": ""})
        );
    }

    #[test]
    fn one_line_has_no_newlines() {
        let e = CniError::new(6, "failed to decode content", "line 1\nline 2");
        assert_eq!(
            e.one_line(),
            "error 6: failed to decode content: line 1 line 2"
        );
    }
}

//! What a command reports when it fails: a message for standard error and an exit code
//! (1: the call failed; 2: the command line or a local file is wrong).

/// A failure to report: the message, and the exit code.
pub struct Failure(pub String, pub u8);

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        use tonic::Code;
        let text = match s.code() {
            Code::Unauthenticated => format!(
                "the server refused the call: {} (set --token or BATON_TOKEN to the server's admin.token)",
                s.message()
            ),
            Code::NotFound => s.message().to_string(),
            Code::InvalidArgument => format!("bad request: {}", s.message()),
            Code::Unavailable => format!("unavailable: {}", s.message()),
            code => format!("{}: {}", code.description(), s.message()),
        };
        Failure(text, 1)
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

#[cfg(test)]
mod tests {
    use super::Failure;
    use tonic::{Code, Status};

    fn text(s: Status) -> (String, u8) {
        let Failure(message, code) = s.into();
        (message, code)
    }

    #[test]
    fn statuses_read_as_sentences_and_exit_1() {
        assert_eq!(
            text(Status::not_found("no message X")),
            ("no message X".to_string(), 1)
        );
        assert_eq!(
            text(Status::invalid_argument("bad id")),
            ("bad request: bad id".to_string(), 1)
        );
        assert_eq!(
            text(Status::unavailable("no leader")),
            ("unavailable: no leader".to_string(), 1)
        );
        let (message, code) = text(Status::unauthenticated("missing token"));
        assert!(message.starts_with("the server refused the call: missing token"));
        assert!(message.contains("BATON_TOKEN"));
        assert_eq!(code, 1);
        let (message, _) = text(Status::new(Code::Internal, "boom"));
        assert_eq!(message, format!("{}: boom", Code::Internal.description()));
    }
}

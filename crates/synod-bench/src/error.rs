//! The one error type of the benchmark: what failed, in words an operator can act on.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BenchError(pub String);

impl BenchError {
    pub fn new(reason: impl Into<String>) -> BenchError {
        BenchError(reason.into())
    }

    /// `context: self`, for errors passed up through a step.
    pub fn context(self, context: impl fmt::Display) -> BenchError {
        BenchError(format!("{context}: {}", self.0))
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<std::io::Error> for BenchError {
    fn from(error: std::io::Error) -> BenchError {
        BenchError(error.to_string())
    }
}

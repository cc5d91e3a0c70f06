//! Maelstrom's error codes (its protocol documentation's error table). Definite errors
//! mean the operation did not happen; indefinite ones (timeout, crash) mean it may have.

/// Indefinite: the node gave up waiting; the operation may or may not have happened.
pub const TIMEOUT: u64 = 0;
pub const NODE_NOT_FOUND: u64 = 1;
/// The request type is not supported by this node.
pub const NOT_SUPPORTED: u64 = 10;
/// Definite: the operation was not performed (e.g. no leader is known); try again.
pub const TEMPORARILY_UNAVAILABLE: u64 = 11;
/// Definite: the request could not be understood.
pub const MALFORMED_REQUEST: u64 = 12;
/// Indefinite.
pub const CRASH: u64 = 13;
/// Definite.
pub const ABORT: u64 = 14;
pub const KEY_DOES_NOT_EXIST: u64 = 20;
pub const KEY_ALREADY_EXISTS: u64 = 21;
pub const PRECONDITION_FAILED: u64 = 22;
pub const TXN_CONFLICT: u64 = 30;

/// True when an error with this code means the operation certainly did not take
/// effect. Unknown codes are treated as indefinite, as Maelstrom does.
pub fn is_definite(code: u64) -> bool {
    !matches!(code, TIMEOUT | CRASH) && code <= TXN_CONFLICT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_crashes_are_indefinite() {
        assert!(!is_definite(TIMEOUT));
        assert!(!is_definite(CRASH));
        assert!(!is_definite(1000));
        for code in [
            NODE_NOT_FOUND,
            NOT_SUPPORTED,
            TEMPORARILY_UNAVAILABLE,
            MALFORMED_REQUEST,
            ABORT,
            KEY_DOES_NOT_EXIST,
            KEY_ALREADY_EXISTS,
            PRECONDITION_FAILED,
            TXN_CONFLICT,
        ] {
            assert!(is_definite(code), "code {code}");
        }
    }
}

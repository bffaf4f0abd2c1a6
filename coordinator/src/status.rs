//! Building gRPC statuses with REAPI error details, and `google.rpc.Status` values for
//! per-entry results of batch calls. Which code a domain error gets is decided in each
//! service's own `impl From<..> for Status`, not here.

use prost::Message;
use tessera_cas::digest::Digest;
use tessera_cas::meta::MetaError;
use tessera_proto::rpc;
use tonic::{Code, Status};

/// `FAILED_PRECONDITION` with a `PreconditionFailure` detail naming each missing blob by
/// [`tessera_cas::resource::missing_subject`] (`blobs/{hash}/{size}`, with the digest function
/// segment for functions other than SHA-256), as REAPI asks so clients can re-upload exactly
/// what is missing.
pub(crate) fn missing_blobs(message: String, missing: &[Digest]) -> Status {
    let details = precondition_failure(message.clone(), missing, |_| String::new());
    Status::with_details(
        Code::FailedPrecondition,
        message,
        details.encode_to_vec().into(),
    )
}

/// The same as a `google.rpc.Status`, for `ExecuteResponse.status` when an agent found inputs
/// missing while fetching them: each violation says the blob is not in the CAS, and with no
/// blob named there is no detail.
pub(crate) fn missing_inputs_status(message: String, missing: &[Digest]) -> rpc::Status {
    if missing.is_empty() {
        return rpc::Status {
            code: Code::FailedPrecondition as i32,
            message,
            details: Vec::new(),
        };
    }
    precondition_failure(message, missing, |d| {
        format!("input blob {d} is not in the CAS")
    })
}

fn precondition_failure(
    message: String,
    missing: &[Digest],
    description: impl Fn(&Digest) -> String,
) -> rpc::Status {
    let failure = rpc::PreconditionFailure {
        violations: missing
            .iter()
            .map(|d| rpc::precondition_failure::Violation {
                r#type: "MISSING".to_owned(),
                subject: tessera_cas::resource::missing_subject(d),
                description: description(d),
            })
            .collect(),
    };
    rpc::Status {
        code: Code::FailedPrecondition as i32,
        message,
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.PreconditionFailure".to_owned(),
            value: failure.encode_to_vec(),
        }],
    }
}

/// A `google.rpc.Status` for one entry of a batch response.
pub(crate) fn rpc_status(status: &Status) -> rpc::Status {
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}

/// The OK `google.rpc.Status`.
pub(crate) fn rpc_ok() -> rpc::Status {
    rpc::Status {
        code: Code::Ok as i32,
        message: String::new(),
        details: Vec::new(),
    }
}

/// The status for a blob store failure, shared by the CAS and ByteStream services.
pub(crate) fn store_error(error: &tessera_cas::store::StoreError) -> Status {
    use tessera_cas::store::StoreError;
    match error {
        // The client sent bytes that do not match their digest.
        StoreError::Digest(_) | StoreError::Overflow { .. } => {
            Status::invalid_argument(error.to_string())
        }
        StoreError::Full { .. } | StoreError::OutOfSpace { .. } => {
            Status::resource_exhausted(error.to_string())
        }
        // Only streaming reads see this: the bytes already sent must not be accepted.
        StoreError::Corrupt { .. } => Status::data_loss(error.to_string()),
        StoreError::Meta(inner) => meta_error(error, inner),
        StoreError::Io { .. } => Status::internal(error.to_string()),
    }
}

/// The status for a failure whose cause is the metadata store: a full disk is
/// `RESOURCE_EXHAUSTED` and a store reopening after an I/O error `UNAVAILABLE` (both
/// retryable, with the store's own message saying what is full or wrong); anything else is
/// `INTERNAL` with `outer`'s message.
pub(crate) fn meta_error(outer: &dyn std::fmt::Display, error: &MetaError) -> Status {
    match error {
        MetaError::OutOfSpace { .. } => Status::resource_exhausted(error.to_string()),
        MetaError::Unavailable { .. } | MetaError::Closed => Status::unavailable(error.to_string()),
        _ => Status::internal(outer.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use tessera_cas::digest::DigestFunction;

    use super::*;

    #[test]
    fn missing_blobs_are_named_with_their_digest_function() {
        let sha = DigestFunction::Sha256.digest_of(b"gone");
        let blake = DigestFunction::Blake3.digest_of(b"gone too");
        let status = missing_inputs_status("inputs missing".to_owned(), &[sha, blake]);
        assert_eq!(status.code, Code::FailedPrecondition as i32);
        assert_eq!(status.message, "inputs missing");
        let failure = rpc::PreconditionFailure::decode(status.details[0].value.as_slice()).unwrap();
        let subjects: Vec<(&str, &str)> = failure
            .violations
            .iter()
            .map(|v| (v.r#type.as_str(), v.subject.as_str()))
            .collect();
        assert_eq!(
            failure.violations[0].description,
            format!("input blob {sha} is not in the CAS")
        );
        let expected = [
            format!("blobs/{}/4", sha.hash_hex()),
            // Before one function built subjects, agents wrote BLAKE3 ones without `blake3/`.
            format!("blobs/blake3/{}/8", blake.hash_hex()),
        ];
        assert_eq!(
            subjects,
            [
                ("MISSING", expected[0].as_str()),
                ("MISSING", expected[1].as_str())
            ]
        );
    }
}

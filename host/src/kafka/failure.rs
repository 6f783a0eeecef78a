//! Kafka errors, classified once, by code: what the step that met one must
//! do.

use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

/// A Kafka error, classified once, by what the step that met it must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Try again later: the broker is away, a leader moved, a queue is
    /// full, a request timed out.
    Retriable,
    /// The open transaction cannot commit: abort it and process its
    /// batches again. The producer is fine.
    Abortable,
    /// The broker refuses this record for good, and sending it again
    /// fails again: larger than the topic's `max.message.bytes`, or invalid
    /// for the topic (no key on a compacted topic, a timestamp out of the
    /// topic's range). Other records are not concerned, though a refusal
    /// that names a batch may include records that are fine alone.
    Record,
    /// The producer cannot be used any more (fenced by a newer instance, a
    /// fatal idempotence or transaction error): replace it.
    Fatal,
}

impl Failure {
    /// What `error` means.
    ///
    /// Fencing is fatal whatever flags librdkafka gives it: a broker may
    /// answer a produce request with `PRODUCER_FENCED` flagged only
    /// "abortable", and a fenced producer that aborts and tries again only
    /// fails again.
    pub fn of(error: &KafkaError) -> Self {
        let code = match error {
            KafkaError::Transaction(e) => e.code(),
            _ => match error.rdkafka_error_code() {
                Some(code) => code,
                None => return Self::Retriable,
            },
        };
        match (code, error) {
            (
                Code::Fatal
                | Code::Fenced
                | Code::ProducerFenced
                | Code::InvalidProducerEpoch
                | Code::TransactionalIdAuthorizationFailed,
                _,
            ) => Self::Fatal,
            (
                Code::MessageSizeTooLarge
                | Code::MessageBatchTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidRecord
                | Code::InvalidTimestamp,
                KafkaError::MessageProduction(_),
            ) => Self::Record,
            (_, KafkaError::Transaction(e)) if e.is_fatal() => Self::Fatal,
            (_, KafkaError::Transaction(e)) if e.txn_requires_abort() => Self::Abortable,
            _ => Self::Retriable,
        }
    }

    /// The classification of the first Kafka error in `error`'s chain
    /// ([`Failure::Retriable`] when there is none).
    pub fn in_chain(error: &anyhow::Error) -> Self {
        error.chain().find_map(|c| c.downcast_ref::<KafkaError>()).map_or(Self::Retriable, Self::of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_errors_are_classified_by_code_not_by_text() {
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::ProducerFenced)), Failure::Fatal);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::Fatal)), Failure::Fatal);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::Fenced)), Failure::Fatal);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::MessageTimedOut)), Failure::Retriable);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::QueueFull)), Failure::Retriable);
        assert_eq!(Failure::of(&KafkaError::Canceled), Failure::Retriable);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::MessageSizeTooLarge)), Failure::Record);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::InvalidRecord)), Failure::Record);
        assert_eq!(Failure::of(&KafkaError::MessageProduction(Code::UnknownTopicOrPartition)), Failure::Retriable);
        let wrapped = anyhow::Error::new(KafkaError::MessageProduction(Code::InvalidProducerEpoch)).context("commit");
        assert_eq!(Failure::in_chain(&wrapped), Failure::Fatal);
        assert_eq!(Failure::in_chain(&anyhow::anyhow!("no Kafka error here")), Failure::Retriable);
    }
}

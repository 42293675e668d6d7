//! The statuses a row moves through, as types: stored as their lowercase names in a `TEXT` column on both
//! backends, so a misspelt status is a compile error and an unknown one read back is a clear error.

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

/// Declares a status enum with its stored names, and its Diesel conversions to and from `Text`.
macro_rules! text_status {
    ($(#[$doc:meta])* $name:ident { $($(#[$variant_doc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = Text)]
        pub enum $name {
            $($(#[$variant_doc])* $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<DB: Backend> FromSql<Text, DB> for $name
        where
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                Ok(String::from_sql(bytes)?.parse()?)
            }
        }

        impl<DB: Backend> ToSql<Text, DB> for $name
        where
            str: ToSql<Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                self.as_str().to_sql(out)
            }
        }
    };
}

text_status! {
    /// Where an image's row stands.
    ImageStatus {
        Stored = "stored",
        /// Set while a delete removes the objects; such rows are invisible and a retried delete finishes them.
        Deleting = "deleting",
        /// Set by `upshot reconcile --repair` when the original is gone from the store: the image is lost, its
        /// row and notification history are kept, and reads answer 410.
        Missing = "missing",
    }
}

text_status! {
    /// Where a direct upload session stands.
    SessionStatus {
        /// Waiting for its file and a completion.
        Pending = "pending",
        /// Claimed by a completion or a bucket event until `claimed_until`.
        Processing = "processing",
        Stored = "stored",
        Failed = "failed",
    }
}

text_status! {
    /// Where a notification in the outbox stands.
    OutboxStatus {
        Pending = "pending",
        /// Claimed by a relay until its lease ends.
        Processing = "processing",
        Sent = "sent",
        /// Parked: refused for good or out of retries; `upshot notifications retry` revives it.
        Failed = "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_as_they_are_written() {
        for status in [ImageStatus::Stored, ImageStatus::Deleting, ImageStatus::Missing] {
            assert_eq!(status.as_str().parse::<ImageStatus>(), Ok(status));
        }
        assert_eq!("processing".parse::<SessionStatus>(), Ok(SessionStatus::Processing));
        assert_eq!("sent".parse::<OutboxStatus>(), Ok(OutboxStatus::Sent));
        assert!("Stored".parse::<ImageStatus>().is_err());
    }
}

//! Ids as the database keeps them: an `ImageId` is its 32 hex digits in a `TEXT` column, and one read back
//! that is not of that shape is an error, not an id.

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

use crate::domain::ImageId;

impl<DB: Backend> FromSql<Text, DB> for ImageId
where
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        let text = String::from_sql(bytes)?;
        ImageId::parse(&text).ok_or_else(|| format!("not an image id: {text:?}").into())
    }
}

impl<DB: Backend> ToSql<Text, DB> for ImageId
where
    str: ToSql<Text, DB>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
        self.as_str().to_sql(out)
    }
}

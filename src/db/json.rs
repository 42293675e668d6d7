//! Typed values kept as JSON in a `TEXT` column on both backends: the row holds the value, not its text, and
//! text that does not decode is an error when the row is read, not a default somewhere later.

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value and its JSON encoding, made once when the value is, so that a row can lend the text to the
/// database whichever backend it writes to.
#[derive(Debug, Clone, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
#[diesel(sql_type = Text)]
pub struct Json<T> {
    value: T,
    text: String,
}

impl<T: Serialize> Json<T> {
    pub fn new(value: T) -> Self {
        let text = serde_json::to_string(&value).expect("a row's JSON value serializes");
        Json { value, text }
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: DeserializeOwned, DB: Backend> FromSql<Text, DB> for Json<T>
where
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        let text = String::from_sql(bytes)?;
        let value = serde_json::from_str(&text)?;
        Ok(Json { value, text })
    }
}

impl<T: std::fmt::Debug, DB: Backend> ToSql<Text, DB> for Json<T>
where
    str: ToSql<Text, DB>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
        self.text.as_str().to_sql(out)
    }
}

#[cfg(test)]
mod tests {
    use diesel::prelude::*;
    use diesel::sql_types::Text;

    use super::Json;

    #[test]
    fn round_trips_and_refuses_text_that_does_not_decode() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        let back: Json<Vec<u32>> =
            diesel::select(Json::new(vec![1, 2]).into_sql::<Text>()).get_result(&mut conn).unwrap();
        assert_eq!(*back, [1, 2]);
        let broken = diesel::select(diesel::dsl::sql::<Text>("'[1,'")).get_result::<Json<Vec<u32>>>(&mut conn);
        assert!(broken.is_err());
    }
}

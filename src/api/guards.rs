//! Request guards that never fail on their own: handlers decide, so every refusal carries its stable code.

use rocket::request::{FromRequest, Outcome, Request};

use crate::domain::{constant_time_eq, IdempotencyKey};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::responses::refuse;
use crate::state::AppState;

/// The `Idempotency-Key` header, if sent.
pub struct IdempotencyHeader(Option<String>);

impl IdempotencyHeader {
    pub fn key(&self) -> AppResult<Option<IdempotencyKey>> {
        match &self.0 {
            None => Ok(None),
            Some(raw) => IdempotencyKey::parse(raw).map(Some).ok_or_else(|| {
                AppError::new(
                    ErrorCode::InvalidIdempotencyKey,
                    "Idempotency-Key must be 1 to 255 visible ASCII characters.",
                )
            }),
        }
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for IdempotencyHeader {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        Outcome::Success(IdempotencyHeader(req.headers().get_one("Idempotency-Key").map(str::to_owned)))
    }
}

/// The credentials a request presents: `Authorization: Bearer …` and `X-Delete-Token`.
pub struct Credentials {
    bearer: Option<String>,
    delete_token: Option<String>,
    admin_key: Option<String>,
}

impl Credentials {
    /// True when the bearer token is the configured admin API key (compared in constant time).
    pub fn is_admin(&self) -> bool {
        match (&self.bearer, &self.admin_key) {
            (Some(given), Some(expected)) => constant_time_eq(given.as_bytes(), expected.as_bytes()),
            _ => false,
        }
    }

    /// Admin routes: 403 while no admin key is configured, 401 without the right one.
    pub fn require_admin(&self, state: &AppState) -> AppResult<()> {
        if state.app.config.settings.keys.admin_api_key.is_none() {
            return Err(AppError::new(
                ErrorCode::Forbidden,
                "Admin routes are disabled: no admin API key is configured.",
            ));
        }
        if !self.is_admin() {
            return Err(AppError::new(
                ErrorCode::Unauthorized,
                "This route needs the admin API key as a bearer token.",
            ));
        }
        Ok(())
    }

    /// The delete token: `X-Delete-Token`, or a bearer token that is not the admin key.
    pub fn delete_token(&self) -> Option<&str> {
        self.delete_token.as_deref().or(self.bearer.as_deref().filter(|_| !self.is_admin()))
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Credentials {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let bearer = req
            .headers()
            .get_one("Authorization")
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| token.trim().to_owned());
        let delete_token = req.headers().get_one("X-Delete-Token").map(|t| t.trim().to_owned());
        let admin_key = req.rocket().state::<AppState>().and_then(|s| s.app.config.settings.keys.admin_api_key.clone());
        Outcome::Success(Credentials { bearer, delete_token, admin_key })
    }
}

/// The address a request comes from (see `telemetry::client_ip`): behind the load balancer, the client it saw.
pub struct ClientAddress(pub std::net::IpAddr);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for ClientAddress {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let hops = req.rocket().state::<AppState>().map_or(0, |s| s.app.config.settings.web.trusted_proxy_hops);
        let unknown = std::net::IpAddr::from([0, 0, 0, 0]);
        Outcome::Success(ClientAddress(crate::telemetry::client_ip(req, hops).unwrap_or(unknown)))
    }
}

/// One intake request taken from its client's allowance (`client_limits`) and counted among its requests in
/// flight until it ends, before the body is read: a client over its allowance or its requests in flight gets
/// 429 `TOO_MANY_REQUESTS` with `Retry-After` (from the catcher), and none of its body is buffered or spooled.
pub struct IntakeAllowance;

/// The request's place among its client's intake requests in flight, given back when the request is dropped.
struct InFlight {
    _slot: crate::client_limits::ClientSlot,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for IntakeAllowance {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let Some(state) = req.rocket().state::<AppState>() else { return Outcome::Success(IntakeAllowance) };
        let Some(ClientAddress(client)) = ClientAddress::from_request(req).await.succeeded() else {
            return Outcome::Success(IntakeAllowance);
        };
        let Some(slot) = state.client_limits.enter_intake(client) else {
            let message = "Too many uploads from your address are under way; send the next when one has finished.";
            return refuse(req, AppError::new(ErrorCode::TooManyRequests, message).retry_after(1));
        };
        if let Err(wait_secs) = state.client_limits.take_intake(client) {
            let message = format!("Too many requests from your address; try again in {wait_secs} s.");
            return refuse(req, AppError::new(ErrorCode::TooManyRequests, message).retry_after(wait_secs));
        }
        req.local_cache(|| InFlight { _slot: slot });
        Outcome::Success(IntakeAllowance)
    }
}

/// Room on disk for a multipart body, taken before Rocket spools it: its `Content-Length` (the form's limit
/// when it has none, or more) counted against `spool_quota_bytes` for as long as the request lives. Over the
/// quota, the request waits up to `cpu_wait_ms`, then gets 503 `BUSY` with none of its body read.
pub struct SpoolReservation;

#[rocket::async_trait]
impl<'r> FromRequest<'r> for SpoolReservation {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let Some(state) = req.rocket().state::<AppState>() else { return Outcome::Success(SpoolReservation) };
        let form_limit = state.app.config.settings.uploads.max_upload_bytes + crate::config::FORM_OVERHEAD_BYTES;
        let declared = req.headers().get_one("Content-Length").and_then(|v| v.parse::<u64>().ok());
        match state.reserve_spool(declared.unwrap_or(form_limit).min(form_limit)).await {
            Ok(room) => {
                req.local_cache(|| SpoolRoom { _room: room });
                Outcome::Success(SpoolReservation)
            }
            Err(error) => refuse(req, error),
        }
    }
}

/// The reserved room, released when the request is dropped.
struct SpoolRoom {
    _room: tokio::sync::OwnedSemaphorePermit,
}

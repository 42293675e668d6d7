//! The JSON API (`/api/v1`), the compatibility routes and the operations endpoints.

mod classify;
mod compat;
mod doc;
pub mod guards;
mod image_routes;
pub mod openapi;
mod ops;
mod spooled;
mod subscriptions;
pub mod upload;
mod upload_sessions;

use rocket::Route;

pub fn v1_routes() -> Vec<Route> {
    let mut routes = image_routes::routes();
    routes.extend(classify::routes());
    routes.extend(subscriptions::routes());
    routes.extend(upload_sessions::routes());
    routes.extend(openapi::routes());
    routes
}

pub fn root_routes() -> Vec<Route> {
    let mut routes = compat::routes();
    routes.extend(ops::routes());
    routes
}

//! The JSON API (`/api/v1`), the compatibility routes and the operations endpoints.

mod classify;
mod compat;
pub mod guards;
mod images;
pub mod openapi;
mod ops;
mod subscriptions;
pub mod upload;

use rocket::Route;

pub fn v1_routes() -> Vec<Route> {
    let mut routes = images::routes();
    routes.extend(classify::routes());
    routes.extend(subscriptions::routes());
    routes.extend(openapi::routes());
    routes
}

pub fn root_routes() -> Vec<Route> {
    let mut routes = compat::routes();
    routes.extend(ops::routes());
    routes
}

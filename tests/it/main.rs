//! Integration tests: the real server over HTTP, on both stacks (SQLite + local directory, and PostgreSQL +
//! S3 on a local endpoint). Run them with `scripts/test.sh`, which starts the PostgreSQL cluster and the S3
//! endpoint they need.

mod abuse;
mod connections;
mod direct_uploads;
mod faults;
mod fuzz;
mod heif;
mod helpers;
mod images;
mod inference;
mod meta;
mod notifications;
mod outage;
mod pages;
mod pipeline;
mod production;
mod reconcile;
mod traces;

//! NeuraBalancer: an HTTP load balancer on Pingora that sends each request to the backend
//! expected to answer fastest.
//!
//! Layout: [`config`] (typed files), [`strategy`] (pure selection algorithms),
//! [`upstream`] (pools, live backend state, Pingora `BackendSelection`), [`proxy`] (the
//! `ProxyHttp` phases), [`downstream`] (client connections and their timeouts),
//! [`headers`], [`path`] and [`cidr`] (what the proxy believes of a request), [`health`]
//! (active checks), [`control`] (reloads, drain), [`admin`] (admin API), [`metrics`], [`store`] (request records to PostgreSQL and
//! JSONL), [`features`] (what a decision sees), [`ml`] (the learned strategy's scores, scorer and
//! fallback), [`server`] (assembly).

pub mod admin;
pub mod cidr;
pub mod clock;
pub mod config;
pub mod control;
pub mod downstream;
pub mod features;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod ml;
pub mod orca;
pub mod path;
pub mod proxy;
pub mod server;
pub mod state;
pub mod store;
pub use nb_strategy as strategy;
pub mod upstream;

//! The `keel` command's library: the dashboard ([`serve`]) for a service to
//! mount in its own process, where `/metrics` then carries the runtime's job
//! counters beside storage's gauges:
//!
//! ```no_run
//! # async fn demo(admin: keel::admin::Admin) -> Result<(), Box<dyn std::error::Error>> {
//! use keel_cli::serve::{router, ServeOptions};
//! let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
//! let options = ServeOptions { listen: "127.0.0.1:8080".parse()?, auth: None, read_only: false };
//! let app = router(admin, &options, metrics);
//! let listener = tokio::net::TcpListener::bind(options.listen).await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod render;
pub mod serve;

//! The alert lifecycle and notifications, after Prometheus Alertmanager.
//!
//! ```text
//! detections ─[alert stage]→ ANOM_ALERTS (KV: one record per alert identity, its status)
//!                        └──→ anom.<p>.alerts (stream: every change of status)
//! ANOM_ALERTS ─[notifier, one per sink]→ route → inhibit → silence → group → notify
//!                                              (ANOM_NFLOG: what each group was last sent)
//! ```
//! The alert stage of a partition is the only writer of its keys' alerts (user
//! acknowledgements reach it as commands on its input), so alert state needs no locks; the
//! notifiers only read it. See docs/alerts.md.

pub mod lifecycle;
pub mod nflog;
pub mod notification;
pub mod notifier;
pub mod record;
pub mod silence;
pub mod store;

pub use notification::{GroupStatus, Notification};
pub use silence::Silence;
pub use store::{Action, Buckets, Command};

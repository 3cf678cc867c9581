//! osvm's identities: a certificate authority built in, short-lived certificates that name a
//! component by a SPIFFE ID, revocation through a CRL, and rustls configurations that require
//! and check them.
//!
//! - [`ca`]: the CA (ECDSA P-256, created on first use, key 0600), issuance, revocation, CRL, the
//!   index of issued certificates; everything under `<state dir>/pki/`.
//! - [`tls`]: server and client configs for mutual TLS: the peer must present a certificate of
//!   this CA, not revoked, of this trust domain; the peer's SPIFFE ID is available for policy.
#![forbid(unsafe_code)]

pub mod ca;
pub mod tls;

pub use ca::{Issued, Pki, PkiError};

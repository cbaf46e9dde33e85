//! TEMPORARY interface stub; replaced by the identity branch at merge.
#![allow(dead_code, unused_variables)]
use std::path::Path;

#[derive(Debug, Clone)]
pub struct AuthorCert {
    pub service: String,
    pub public_key: [u8; 32],
    pub not_before_us: u64,
    pub not_after_us: u64,
    pub serial: Vec<u8>,
    pub der: Vec<u8>,
}
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("stub")]
    Stub,
}
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("stub")]
    Stub,
}
pub struct TrustAnchor;
impl TrustAnchor {
    pub fn load(ca: &Path, revoked: Option<&Path>) -> Result<Self, IdentityError> {
        Err(IdentityError::Stub)
    }
    pub fn ca_der(&self) -> &[u8] {
        &[]
    }
    pub fn admit_author(&self, service: &str, cert_der: &[u8]) -> Result<AuthorCert, CertError> {
        Err(CertError::Stub)
    }
    pub fn is_revoked(&self, cert: &AuthorCert) -> bool {
        false
    }
}
pub struct NodeIdentity {
    pub service: String,
    pub signing_key: ed25519_dalek::SigningKey,
    pub cert: AuthorCert,
}
impl NodeIdentity {
    pub fn load(
        service: &str,
        key_path: &Path,
        cert_path: &Path,
        trust: &TrustAnchor,
        now_us: u64,
    ) -> Result<Self, IdentityError> {
        Err(IdentityError::Stub)
    }
}
pub fn load_channel_key(
    name: &str,
    path: &Path,
) -> Result<crate::core::crypto::ChannelKey, IdentityError> {
    Err(IdentityError::Stub)
}
pub fn read_cert_pem(path: &Path) -> Result<Vec<u8>, IdentityError> {
    Err(IdentityError::Stub)
}
pub fn create_ca(dir: &Path, validity_days: u32, force: bool) -> Result<Vec<std::path::PathBuf>, IdentityError> { Err(IdentityError::Stub) }
pub fn issue_node(dir: &Path, name: &str, validity_days: u32, force: bool) -> Result<Vec<std::path::PathBuf>, IdentityError> { Err(IdentityError::Stub) }
pub fn create_channel(dir: &Path, name: &str, force: bool) -> Result<std::path::PathBuf, IdentityError> { Err(IdentityError::Stub) }
pub fn init_cluster(dir: &Path, nodes: &[String], base_port: u16, validity_days: u32, force: bool) -> Result<Vec<std::path::PathBuf>, IdentityError> { Err(IdentityError::Stub) }

//! Identity and trust: certificates, keys, the trust anchor and revocation.
//! Placeholder, implemented on the identity branch.

//! Per-sandbox certificate authorities for TLS interception.
//!
//! A sandbox whose policy intercepts some names (header rules, `record`,
//! `replay`) gets its own CA: an ECDSA P-256 key and a self-signed
//! certificate named `hull sandbox <id> CA`, valid from an hour ago for ten
//! years, with basic constraints `CA:true, pathlen:0` (it can sign leaf
//! certificates only). The certificate is installed in the sandbox's trust
//! store (by the runtime); the private key never leaves the daemon's state
//! directory: [`CaStore`] keeps `<dir>/<sandbox id>/ca.pem` (certificate) and
//! `<dir>/<sandbox id>/ca.key` (PKCS#8 PEM, mode 0600, the directory 0700).
//!
//! Leaf certificates are minted on demand per name (SAN = that DNS name
//! only, EKU serverAuth, valid from a day ago for a year), all with one
//! in-memory leaf key per CA (generated when the CA is loaded; never
//! written anywhere), and cached with their [`rustls::ServerConfig`] in a
//! small LRU ([`LEAF_CACHE`] names per CA).
//!
//! Limits: a compromised CA key lets its holder impersonate any site to
//! that one sandbox only (each sandbox trusts only its own CA, and no name
//! constraints are set: the sandbox may reach any name in `record` mode).
//! Leaf certificates are not revoked; they simply live in memory.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::ServerConfig;
use rustls::crypto::ring as provider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// Names whose leaf certificate (and server config) is kept per CA.
pub const LEAF_CACHE: usize = 256;

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// Errors of making, loading and using a sandbox CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {} is not a usable {what}", path.display())]
    Invalid { what: &'static str, path: PathBuf },
    #[error("cannot make a certificate for {name:?}: {source}")]
    Cert {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("invalid sandbox id {0:?} for a CA directory")]
    BadId(String),
}

/// One sandbox's CA: its certificate, its key, and the leaf certificates
/// minted so far.
pub struct SandboxCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<Lru>,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCa").finish_non_exhaustive()
    }
}

fn cert_err(name: &str) -> impl FnOnce(rcgen::Error) -> CaError + '_ {
    move |source| CaError::Cert {
        name: name.to_string(),
        source,
    }
}

impl SandboxCa {
    /// A new CA named `hull sandbox <sandbox_id> CA`.
    pub fn generate(sandbox_id: &str) -> Result<SandboxCa, CaError> {
        let label = format!("hull sandbox {sandbox_id} CA");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err(&label))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, label.clone());
        dn.push(DnType::OrganizationName, "hull");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600 + 2 * 24 * 3600)).into();
        params.serial_number = Some(random_serial(&key, sandbox_id));
        let cert = params.self_signed(&key).map_err(cert_err(&label))?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Self::from_parts(cert_pem, cert_der, Issuer::new(params, key))
    }

    fn from_parts(
        cert_pem: String,
        cert_der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    ) -> Result<SandboxCa, CaError> {
        let leaf_key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err("leaf key"))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signer = provider::sign::any_ecdsa_type(&der)?;
        Ok(SandboxCa {
            cert_pem,
            cert_der,
            issuer,
            leaf_key,
            leaf_signer,
            cache: Mutex::new(Lru::new(LEAF_CACHE)),
        })
    }

    /// Write the certificate and key into `dir` (created 0700; the key file
    /// 0600, written to a temporary name and renamed).
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { what, path, source }
        };
        fs::create_dir_all(dir).map_err(io("creating CA directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io("restricting CA directory", dir))?;
        let key_pem = self.issuer.key().serialize_pem();
        for (name, body, mode) in [
            (CA_KEY_FILE, key_pem.as_str(), 0o600),
            (CA_CERT_FILE, self.cert_pem.as_str(), 0o644),
        ] {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
                .map_err(io("writing", &tmp))?;
            f.write_all(body.as_bytes()).map_err(io("writing", &tmp))?;
            f.sync_all().map_err(io("writing", &tmp))?;
            fs::rename(&tmp, &path).map_err(io("renaming into", &path))?;
        }
        Ok(())
    }

    /// Load a CA saved by [`SandboxCa::save`].
    pub fn load(dir: &Path) -> Result<SandboxCa, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| CaError::Io {
                what: "reading",
                path,
                source,
            })
        };
        let key_pem = read(CA_KEY_FILE)?;
        let cert_pem = read(CA_CERT_FILE)?;
        let invalid = |what, name: &str| CaError::Invalid {
            what,
            path: dir.join(name),
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|_| invalid("private key", CA_KEY_FILE))?;
        use rustls_pki_types::pem::PemObject;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| invalid("certificate", CA_CERT_FILE))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|_| invalid("certificate", CA_CERT_FILE))?;
        Self::from_parts(cert_pem, cert_der, issuer)
    }

    /// The CA certificate (PEM), to install in the sandbox's trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A leaf certificate for `name` signed by this CA (DER), with the
    /// leaf key that [`SandboxCa::server_config_for`] serves it with.
    pub fn leaf_cert(&self, name: &str) -> Result<CertificateDer<'static>, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let san = name.to_string().try_into().map_err(cert_err(name))?;
        params.subject_alt_names = vec![SanType::DnsName(san)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(24 * 3600)).into();
        params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).into();
        params.serial_number = Some(random_serial(&self.leaf_key, name));
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(cert_err(name))?;
        Ok(cert.der().clone())
    }

    /// A TLS server configuration presenting a leaf certificate for `name`
    /// (chain: leaf, CA), ALPN `http/1.1` only. Cached per name.
    pub fn server_config_for(&self, name: &str) -> Result<Arc<ServerConfig>, CaError> {
        let name = name.to_ascii_lowercase();
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
        {
            return Ok(c);
        }
        let leaf = self.leaf_cert(&name)?;
        let certified = Arc::new(CertifiedKey::new(
            vec![leaf, self.cert_der.clone()],
            self.leaf_signer.clone(),
        ));
        let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(certified)));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(name, cfg.clone());
        Ok(cfg)
    }
}

/// Serves one certificate chain whatever the client asks (the name was
/// decided before the handshake).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A serial number that differs per certificate: sha256 over the key, the
/// name and the current time, 16 bytes, positive.
fn random_serial(key: &KeyPair, name: &str) -> SerialNumber {
    let mut h = Sha256::new();
    h.update(key.public_key_raw());
    h.update(name.as_bytes());
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(t.as_nanos().to_le_bytes());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    h.update(
        COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// A tiny LRU: a map with a use counter; the least recently used entry goes
/// when full.
struct Lru {
    cap: usize,
    tick: u64,
    map: HashMap<String, (Arc<ServerConfig>, u64)>,
}

impl Lru {
    fn new(cap: usize) -> Lru {
        Lru {
            cap,
            tick: 0,
            map: HashMap::new(),
        }
    }

    fn get(&mut self, k: &str) -> Option<Arc<ServerConfig>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|(v, used)| {
            *used = t;
            v.clone()
        })
    }

    fn put(&mut self, k: String, v: Arc<ServerConfig>) {
        self.tick += 1;
        if self.map.len() >= self.cap
            && !self.map.contains_key(&k)
            && let Some(old) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            self.map.remove(&old);
        }
        self.map.insert(k, (v, self.tick));
    }
}

/// Where the daemon keeps sandbox CAs: `<state_dir>/net/ca`.
pub fn ca_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("net").join("ca")
}

/// The CAs of all sandboxes, kept under one directory of the daemon's
/// state (`<dir>/<sandbox id>/`). Loaded CAs are kept in memory.
#[derive(Debug)]
pub struct CaStore {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<SandboxCa>>>,
}

impl CaStore {
    /// A store under `dir` (created on first use, mode 0700).
    pub fn new(dir: impl Into<PathBuf>) -> CaStore {
        CaStore {
            dir: dir.into(),
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// Where sandbox `id`'s CA files live.
    pub fn dir_of(&self, id: &str) -> Result<PathBuf, CaError> {
        if id.is_empty()
            || id.len() > 128
            || id.starts_with('.')
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(CaError::BadId(id.to_string()));
        }
        Ok(self.dir.join(id))
    }

    /// Sandbox `id`'s CA: from memory, else from disk, else a new one
    /// (saved before it is returned).
    pub fn get_or_create(&self, id: &str) -> Result<Arc<SandboxCa>, CaError> {
        let dir = self.dir_of(id)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ca) = loaded.get(id) {
            return Ok(ca.clone());
        }
        let ca = if dir.join(CA_KEY_FILE).exists() {
            SandboxCa::load(&dir)?
        } else {
            fs::create_dir_all(&self.dir).map_err(|source| CaError::Io {
                what: "creating CA store",
                path: self.dir.clone(),
                source,
            })?;
            let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700));
            let ca = SandboxCa::generate(id)?;
            ca.save(&dir)?;
            ca
        };
        let ca = Arc::new(ca);
        loaded.insert(id.to_string(), ca.clone());
        Ok(ca)
    }

    /// Forget sandbox `id`'s CA and delete its files (when the sandbox is
    /// removed).
    pub fn remove(&self, id: &str) -> Result<(), CaError> {
        let dir = self.dir_of(id)?;
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CaError::Io {
                what: "removing",
                path: dir,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_keeps_identity_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CaStore::new(tmp.path().join("ca"));
        let a = store.get_or_create("sb1").unwrap();
        let dir = store.dir_of("sb1").unwrap();
        let mode = fs::metadata(dir.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SandboxCa::load(&dir).unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        assert!(a.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        // A reloaded CA still signs leaves (new leaf key, same issuer).
        b.server_config_for("example.com").unwrap();
        assert!(store.dir_of("../x").is_err() && store.dir_of("").is_err());
        store.remove("sb1").unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn corrupt_files_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = SandboxCa::generate("sb").unwrap();
        ca.save(tmp.path()).unwrap();
        fs::write(tmp.path().join(CA_KEY_FILE), "junk").unwrap();
        let e = SandboxCa::load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("private key"), "{e}");
    }

    #[test]
    fn lru_evicts_least_recent() {
        let ca = SandboxCa::generate("sb").unwrap();
        let mut lru = Lru::new(2);
        let c = ca.server_config_for("a.example").unwrap();
        lru.put("a".into(), c.clone());
        lru.put("b".into(), c.clone());
        lru.get("a");
        lru.put("c".into(), c);
        assert!(lru.get("a").is_some() && lru.get("b").is_none() && lru.get("c").is_some());
    }
}

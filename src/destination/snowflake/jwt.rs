//! Key-pair authentication: a JWT signed (RS256) with the user's private key, naming the
//! account, the user and the fingerprint of the public key set on the user
//! (`ALTER USER … SET RSA_PUBLIC_KEY`), as Snowflake's key-pair documentation specifies.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The private key of a PEM file: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE
/// KEY`), unencrypted.
pub fn read_key(path: &Path) -> Result<RsaKeyPair> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::definite(format!(
            "cannot read destination private_key_file {}: {e}",
            path.display()
        ))
    })?;
    if text.contains("ENCRYPTED PRIVATE KEY") {
        return Err(Error::definite(format!(
            "{} is an encrypted key: give cdc an unencrypted PKCS#8 copy \
             (openssl pkcs8 -topk8 -nocrypt -in {} -out key.p8), readable by cdc only",
            path.display(),
            path.display()
        )));
    }
    let pkcs1 = text.contains("BEGIN RSA PRIVATE KEY");
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = STANDARD.decode(body).map_err(|_| {
        Error::definite(format!(
            "{} is not a PEM private key (expected -----BEGIN PRIVATE KEY-----)",
            path.display()
        ))
    })?;
    let key = if pkcs1 {
        RsaKeyPair::from_der(&der)
    } else {
        RsaKeyPair::from_pkcs8(&der)
    };
    key.map_err(|e| {
        Error::definite(format!(
            "{} holds no usable RSA private key ({e}); Snowflake key pairs are RSA, 2048 bits or more",
            path.display()
        ))
    })
}

/// `SHA256:` and the base64 SHA-256 of the public key's SubjectPublicKeyInfo, as Snowflake
/// shows it in `DESC USER` (RSA_PUBLIC_KEY_FP).
pub fn fingerprint(key: &RsaKeyPair) -> String {
    let spki = spki(key.public_key().as_ref());
    format!("SHA256:{}", STANDARD.encode(Sha256::digest(&spki)))
}

/// The JWT that logs `user` of `account` in with the key in `path`, valid for an hour.
pub fn token(path: &Path, account: &str, user: &str) -> Result<String> {
    let key = read_key(path)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    sign(&key, account, user, now)
}

fn sign(key: &RsaKeyPair, account: &str, user: &str, now: u64) -> Result<String> {
    let qualified = format!("{}.{}", account.to_uppercase(), user.to_uppercase());
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": format!("{qualified}.{}", fingerprint(key)),
        "sub": qualified,
        "iat": now,
        "exp": now + 3600,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .map_err(|_| Error::definite("signing the Snowflake login token failed".into()))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// DER SubjectPublicKeyInfo around a PKCS#1 RSAPublicKey.
fn spki(rsa_public: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption, NULL }
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(rsa_public);
    let mut inner = ALGORITHM.to_vec();
    inner.extend(der(0x03, &bits));
    der(0x30, &inner)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// An RSA key made by openssl, its fingerprint as openssl computes it, and a token whose
    /// signature verifies with the public key.
    #[test]
    fn tokens_verify_and_fingerprints_match_openssl() {
        let dir = std::env::temp_dir().join(format!("cdc-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.p8");
        let made = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .output();
        let Ok(made) = made else {
            panic!("openssl is needed to make a test key");
        };
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let pubder = Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key)
            .output()
            .unwrap()
            .stdout;
        let expected = format!("SHA256:{}", STANDARD.encode(Sha256::digest(&pubder)));
        let pair = read_key(&key).unwrap();
        assert_eq!(fingerprint(&pair), expected);

        let t = sign(&pair, "myorg-acct", "loader", 1_700_000_000).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "MYORG-ACCT.LOADER");
        assert_eq!(claims["iss"], format!("MYORG-ACCT.LOADER.{expected}"));
        assert_eq!(claims["exp"], 1_700_003_600u64);
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            pair.public_key().as_ref(),
        );
        public
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .expect("the signature verifies");

        std::fs::write(
            dir.join("enc.pem"),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n",
        )
        .unwrap();
        let e = read_key(&dir.join("enc.pem")).unwrap_err().to_string();
        assert!(e.contains("-nocrypt"), "{e}");
        std::fs::write(dir.join("junk.pem"), "hello").unwrap();
        assert!(read_key(&dir.join("junk.pem")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}

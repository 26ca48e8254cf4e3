//! The signature appended to a module by `scripts/sign-file`:
//!
//! ```text
//! [ ELF module ][ signer ][ key id ][ signature ][ struct module_signature ][ "~Module signature appended~\n" ]
//! ```
//!
//! `struct module_signature` is 12 bytes: algo, hash, id_type, signer_len,
//! key_id_len (u8 each), 3 bytes of padding, sig_len (u32 big-endian). Since
//! Linux 4.3 sign-file writes id_type PKCS#7 with the other fields zero and
//! the signer, key id and hash in the PKCS#7 SignedData; modinfo then prints
//! the first signer's issuer CN as `signer`, its serial number as `sig_key`
//! and its digest algorithm as `sig_hashalgo`.

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use der::asn1::ObjectIdentifier;
use der::Decode;
use x509_cert::name::Name;

use super::{hex_bytes, ImageError};
use crate::record::{fields::escape_bytes, image::Signature};

const MAGIC: &[u8] = b"~Module signature appended~\n";
const HEADER_LEN: usize = 12;
const ID_TYPES: [&str; 3] = ["PGP", "X509", "PKCS#7"];
const ID_PKCS7: u8 = 2;
/// `enum pkey_hash_algo` of the pre-PKCS#7 format, as kmod names them.
const HASH_ALGOS: [&str; 9] = [
    "md4", "md5", "sha1", "rmd160", "sha256", "sha384", "sha512", "sha224", "sm3",
];
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Read the trailer of `image`: the signature, and the length of the image
/// before it when the trailer's lengths are consistent.
pub(super) fn read(image: &[u8]) -> (Signature, Option<usize>) {
    let Some(header_end) = image.len().checked_sub(MAGIC.len()) else {
        return (Signature::default(), Some(image.len()));
    };
    if &image[header_end..] != MAGIC {
        return (Signature::default(), Some(image.len()));
    }
    let mut signature = Signature {
        signed: true,
        ..Signature::default()
    };
    match read_signed(image, header_end, &mut signature) {
        Ok(elf_len) => (signature, Some(elf_len)),
        Err((error, elf_len)) => {
            signature.error = Some(error.to_string());
            (signature, elf_len)
        }
    }
}

/// Fill `signature` from the header ending at `header_end`; on failure also
/// say how long the unsigned image is, when that is known.
fn read_signed(
    image: &[u8],
    header_end: usize,
    signature: &mut Signature,
) -> Result<usize, (ImageError, Option<usize>)> {
    let trailer_err = |offset: usize, detail: String| ImageError::SignatureTrailer {
        offset: offset as u64,
        detail,
    };
    let Some(header_start) = header_end.checked_sub(HEADER_LEN) else {
        let detail = format!("only {header_end} bytes precede the magic");
        return Err((trailer_err(header_end, detail), None));
    };
    let h = &image[header_start..header_end];
    let (algo, hash, id_type, signer_len, key_id_len) = (h[0], h[1], h[2], h[3], h[4]);
    let sig_len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    signature.id_type = ID_TYPES
        .get(usize::from(id_type))
        .map(std::string::ToString::to_string);
    if signature.id_type.is_none() {
        let detail = format!("unknown id_type {id_type}");
        return Err((trailer_err(header_start, detail), None));
    }
    let total = u64::from(sig_len) + u64::from(signer_len) + u64::from(key_id_len);
    if sig_len == 0 || total > header_start as u64 {
        let detail = format!(
            "sig_len {sig_len}, signer_len {signer_len} and key_id_len {key_id_len} \
             do not fit in the {header_start} bytes before it"
        );
        return Err((trailer_err(header_start, detail), None));
    }
    let sig_start = header_start - sig_len as usize;
    let elf_len = header_start - total as usize;
    let sig = &image[sig_start..header_start];
    if id_type == ID_PKCS7 {
        read_pkcs7(sig, sig_start, signature).map_err(|e| (e, Some(elf_len)))?;
    } else {
        let key_start = sig_start - usize::from(key_id_len);
        signature.signer = Some(escape_bytes(&image[elf_len..key_start]));
        signature.sig_key = Some(hex_bytes(&image[key_start..sig_start], ":"));
        signature.sig_hashalgo = HASH_ALGOS
            .get(usize::from(hash))
            .map(std::string::ToString::to_string);
        if algo > 1 || signature.sig_hashalgo.is_none() {
            let detail = format!("unknown algo {algo} or hash {hash}");
            return Err((trailer_err(header_start, detail), Some(elf_len)));
        }
    }
    Ok(elf_len)
}

/// Read signer, serial and digest algorithm of the first SignerInfo.
fn read_pkcs7(der: &[u8], offset: usize, signature: &mut Signature) -> Result<(), ImageError> {
    let pkcs7_err = |detail: String| ImageError::Pkcs7 {
        offset: offset as u64,
        detail,
    };
    let der_err = |what: &str, e: der::Error| {
        let at = e
            .position()
            .map(|p| format!(" (at byte {p})"))
            .unwrap_or_default();
        pkcs7_err(format!("{what}: {}{at}", e.kind()))
    };
    let content = ContentInfo::from_der(der).map_err(|e| der_err("ContentInfo", e))?;
    if content.content_type != ID_SIGNED_DATA {
        return Err(pkcs7_err(format!(
            "content type {} is not signedData",
            content.content_type
        )));
    }
    let signed: SignedData = content
        .content
        .decode_as()
        .map_err(|e| der_err("SignedData", e))?;
    let Some(signer) = signed.signer_infos.0.iter().next() else {
        return Err(pkcs7_err("SignedData has no SignerInfo".to_string()));
    };
    signature.sig_hashalgo = Some(hash_name(&signer.digest_alg.oid));
    match &signer.sid {
        SignerIdentifier::IssuerAndSerialNumber(id) => {
            signature.signer = common_name(&id.issuer);
            signature.sig_key = Some(serial_hex(id.serial_number.as_bytes()));
        }
        // CMS signers named by subjectKeyIdentifier (sign-file -k) have no
        // issuer; the key id is what identifies the key.
        SignerIdentifier::SubjectKeyIdentifier(skid) => {
            signature.sig_key = Some(hex_bytes(skid.0.as_bytes(), ":"));
        }
    }
    Ok(())
}

/// The first commonName of a Name, as kmod finds it, raw bytes as text.
fn common_name(name: &Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == ID_COMMON_NAME)
        .map(|atv| escape_bytes(atv.value.value()))
}

/// The serial number as OpenSSL's BN_bn2bin gives it: the magnitude without
/// the sign-padding zero bytes that DER needs.
pub(super) fn serial_hex(der_int: &[u8]) -> String {
    let start = der_int
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(der_int.len());
    hex_bytes(&der_int[start..], ":")
}

/// OpenSSL's long name of a digest OID (what kmod prints), else the OID.
fn hash_name(oid: &ObjectIdentifier) -> String {
    let name = match oid.to_string().as_str() {
        "1.2.840.113549.2.4" => "md4",
        "1.2.840.113549.2.5" => "md5",
        "1.3.14.3.2.26" => "sha1",
        "1.3.36.3.2.1" => "ripemd160",
        "2.16.840.1.101.3.4.2.1" => "sha256",
        "2.16.840.1.101.3.4.2.2" => "sha384",
        "2.16.840.1.101.3.4.2.3" => "sha512",
        "2.16.840.1.101.3.4.2.4" => "sha224",
        "2.16.840.1.101.3.4.2.8" => "sha3-256",
        "2.16.840.1.101.3.4.2.9" => "sha3-384",
        "2.16.840.1.101.3.4.2.10" => "sha3-512",
        "1.2.156.10197.1.401" => "sm3",
        other => return other.to_string(),
    };
    name.to_string()
}

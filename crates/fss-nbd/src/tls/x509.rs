//! The two facts the server reads from certificates itself: the X.509 version (rustls accepts
//! only v3, and saying so beats an opaque handshake failure) and the subject's common names
//! (for `--tls-authz`). A minimal DER walk: no allocation beyond the names, no panics on any
//! input (the client's certificate is parsed after rustls verified it, but still).

/// A DER reader over one level of TLVs.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element: its tag and contents (single-byte tags, definite lengths up to 4 GiB).
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        self.0 = &rest[len..];
        Some((tag, &rest[..len]))
    }

    /// The next element, which must have tag `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, c) if t == tag => Some(c),
            _ => None,
        }
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
/// `[0] EXPLICIT`, the version field of a TBSCertificate.
const VERSION_TAG: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The contents of the TBSCertificate of a DER certificate.
fn tbs(cert: &[u8]) -> Option<Der<'_>> {
    let outer = Der(cert).expect(SEQUENCE)?;
    Some(Der(Der(outer).expect(SEQUENCE)?))
}

/// The certificate's X.509 version (1, 2 or 3), or `None` if it does not parse.
#[must_use]
pub(crate) fn version(cert: &[u8]) -> Option<u8> {
    let mut t = tbs(cert)?;
    let (tag, contents) = t.next()?;
    if tag != VERSION_TAG {
        // The field is DEFAULT v1 and absent then.
        return (tag == INTEGER).then_some(1);
    }
    match Der(contents).expect(INTEGER)? {
        [v] if *v <= 2 => Some(v + 1),
        _ => None,
    }
}

/// The common names (CN) of the certificate's subject, in order; `None` if it does not parse.
#[must_use]
pub(crate) fn subject_common_names(cert: &[u8]) -> Option<Vec<String>> {
    let mut t = tbs(cert)?;
    let (tag, _) = t.next()?;
    if tag == VERSION_TAG {
        t.expect(INTEGER)?; // the serial number
    }
    t.expect(SEQUENCE)?; // signature algorithm
    t.expect(SEQUENCE)?; // issuer
    t.expect(SEQUENCE)?; // validity
    let mut subject = Der(t.expect(SEQUENCE)?);
    let mut names = Vec::new();
    while !subject.0.is_empty() {
        let mut rdn = Der(subject.expect(SET)?);
        while !rdn.0.is_empty() {
            let mut atv = Der(rdn.expect(SEQUENCE)?);
            let oid = atv.expect(OID)?;
            let (_, value) = atv.next()?;
            if oid == COMMON_NAME {
                names.push(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if contents.len() < 0x80 {
            v.push(contents.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(contents.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(contents);
        v
    }

    fn name(cns: &[&str]) -> Vec<u8> {
        let mut rdns = tlv(
            SET,
            &tlv(
                SEQUENCE,
                &[tlv(OID, &[0x55, 4, 10]), tlv(0x0c, b"org")].concat(),
            ),
        );
        for cn in cns {
            let atv = [tlv(OID, COMMON_NAME), tlv(0x0c, cn.as_bytes())].concat();
            rdns.extend(tlv(SET, &tlv(SEQUENCE, &atv)));
        }
        tlv(SEQUENCE, &rdns)
    }

    fn cert(version: Option<u8>, cns: &[&str]) -> Vec<u8> {
        let mut tbs = Vec::new();
        if let Some(v) = version {
            tbs.extend(tlv(VERSION_TAG, &tlv(INTEGER, &[v])));
        }
        tbs.extend(tlv(INTEGER, &[7]));
        tbs.extend(tlv(SEQUENCE, &tlv(OID, &[1, 2])));
        tbs.extend(name(&["issuer"]));
        tbs.extend(tlv(SEQUENCE, &[0u8; 200]));
        tbs.extend(name(cns));
        let body = [tlv(SEQUENCE, &tbs), tlv(SEQUENCE, &[]), tlv(0x03, &[0])].concat();
        tlv(SEQUENCE, &body)
    }

    #[test]
    fn versions_and_names() {
        assert_eq!(version(&cert(Some(2), &["a"])), Some(3));
        assert_eq!(version(&cert(None, &["a"])), Some(1));
        assert_eq!(
            subject_common_names(&cert(Some(2), &["alice", "x"])),
            Some(vec!["alice".to_string(), "x".to_string()])
        );
        assert_eq!(subject_common_names(&cert(None, &[])), Some(vec![]));
    }

    #[test]
    fn every_truncation_and_garbage_is_none_not_a_panic() {
        let c = cert(Some(2), &["alice"]);
        for n in 0..c.len() {
            assert_eq!(version(&c[..n]), None, "{n}");
            assert_eq!(subject_common_names(&c[..n]), None, "{n}");
        }
        let mut seed = 1u64;
        for _ in 0..2000 {
            let mut g = c.clone();
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let i = (seed >> 33) as usize % g.len();
            g[i] = (seed >> 20) as u8;
            let _ = version(&g);
            let _ = subject_common_names(&g);
        }
        assert_eq!(version(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}

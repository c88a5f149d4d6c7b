//! Checking a repository: its structure (every manifest decodes, every chunk it needs is
//! indexed, every indexed pack exists and is long enough) and, with `read_data`, every chunk's
//! content (authenticated, decompressed, hashed against its id).

use crate::crypto::{hex, unhex};
use crate::error::{RepoError, Result};
use crate::format::{pack_object, PackIndex, BACKUPS, INDEX, PACKS};
use crate::repo::Repository;
use crate::restore::decode_blob;
use std::collections::{BTreeMap, HashMap};

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Backups checked.
    pub backups: usize,
    /// Packs checked.
    pub packs: usize,
    /// Chunks whose data was read and checked.
    pub chunks_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Every problem, each naming the object (and backup and offset where known).
    pub problems: Vec<String>,
}

/// Verify the repository; `progress(done, total)` counts packs.
///
/// # Errors
/// Listing failed (problems with single objects are reported, not returned).
pub fn verify(
    repo: &Repository,
    read_data: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let mut r = VerifyReport::default();
    let packs: BTreeMap<String, u64> = repo
        .backend()
        .list(PACKS)?
        .into_iter()
        .filter_map(|(n, s)| n.strip_prefix(PACKS).map(|n| (n.to_string(), s)))
        .collect();
    let mut indexes = Vec::new();
    for (object, _) in repo.backend().list(INDEX)? {
        match repo.read_doc::<PackIndex>(&object) {
            Ok(pi) => indexes.push(pi),
            Err(e) => r.problems.push(e.to_string()),
        }
    }
    let mut needed_by: HashMap<[u8; 32], String> = HashMap::new();
    let index = repo.load_index().unwrap_or_default();
    for (object, _) in repo.backend().list(BACKUPS)? {
        let m = match repo.read_doc::<crate::format::Manifest>(&object) {
            Ok(m) => m,
            Err(e) => {
                r.problems.push(e.to_string());
                continue;
            }
        };
        r.backups += 1;
        for (i, id) in m.chunks.iter().enumerate() {
            let Some(id) = id else { continue };
            match unhex::<32>(id) {
                Some(cid) if index.chunks.contains_key(&cid) => {
                    needed_by.entry(cid).or_insert_with(|| m.id.clone());
                }
                _ => r.problems.push(format!(
                    "backup {}: chunk {id} at volume offset {} is in no index",
                    m.id,
                    i as u64 * u64::from(m.chunk_size)
                )),
            }
        }
    }
    let total = indexes.len() as u64;
    for (n, pi) in indexes.iter().enumerate() {
        r.packs += 1;
        check_pack(repo, pi, &packs, &needed_by, read_data, &mut r);
        progress(n as u64 + 1, total);
    }
    Ok(r)
}

fn check_pack(
    repo: &Repository,
    pi: &PackIndex,
    packs: &BTreeMap<String, u64>,
    needed_by: &HashMap<[u8; 32], String>,
    read_data: bool,
    r: &mut VerifyReport,
) {
    let object = pack_object(&pi.pack);
    let Some(&size) = packs.get(&pi.pack) else {
        r.problems.push(format!(
            "object '{object}' is missing, though its index names {} chunks",
            pi.chunks.len()
        ));
        return;
    };
    if let Some(e) = pi
        .chunks
        .iter()
        .find(|e| e.offset + u64::from(e.length) > size)
    {
        r.problems.push(format!(
            "object '{object}' has {size} bytes; its index puts a chunk at offset {} of {} bytes",
            e.offset, e.length
        ));
        return;
    }
    if !read_data {
        return;
    }
    let data = match repo.backend().get(&object) {
        Ok(d) => d,
        Err(e) => {
            r.problems.push(e.to_string());
            return;
        }
    };
    r.bytes_read += data.len() as u64;
    for e in &pi.chunks {
        let backup = needed_by.get(&e.id).map_or("(none)", String::as_str);
        let start = usize::try_from(e.offset).unwrap_or(usize::MAX);
        let blob = data
            .get(start..start + e.length as usize)
            .unwrap_or_default();
        match decode_blob(repo, backup, &pi.pack, e, blob) {
            Ok(_) => r.chunks_read += 1,
            Err(err @ RepoError::Damaged { .. }) => r.problems.push(err.to_string()),
            Err(err) => r.problems.push(format!("chunk {}: {err}", hex(&e.id))),
        }
    }
}

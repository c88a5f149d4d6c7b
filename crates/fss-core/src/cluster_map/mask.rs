//! Masks: the preserved blocks of one cluster, as 16-bit words (one word per cluster up to
//! 64 KiB clusters, 256 at 16 MiB).

/// A set of blocks inside one cluster, as 16-bit words (bit `i % 16` of word `i / 16`).
pub type Mask = [u16];

/// Number of 16-bit words in a mask of `blocks_per_cluster` blocks.
#[must_use]
pub fn mask_words(blocks_per_cluster: u32) -> usize {
    blocks_per_cluster.div_ceil(16) as usize
}

/// Whether block `i` is in `mask`.
#[must_use]
pub fn mask_has(mask: &Mask, i: u32) -> bool {
    mask[(i / 16) as usize] & (1 << (i % 16)) != 0
}

/// Add block `i` to `mask`.
pub fn mask_set(mask: &mut Mask, i: u32) {
    mask[(i / 16) as usize] |= 1 << (i % 16);
}

/// Number of blocks in `mask`.
#[must_use]
pub fn mask_count(mask: &Mask) -> u32 {
    mask.iter().map(|w| w.count_ones()).sum()
}

/// A mask with blocks `[from, to)` set.
#[must_use]
pub fn mask_range(words: usize, from: u32, to: u32) -> Vec<u16> {
    let mut m = vec![0u16; words];
    for i in from..to {
        mask_set(&mut m, i);
    }
    m
}

/// Whether `mask` has no block.
#[must_use]
pub fn mask_is_empty(mask: &Mask) -> bool {
    mask.iter().all(|&w| w == 0)
}

/// Remove from `mask` every block in `other`.
pub fn mask_remove(mask: &mut Mask, other: &Mask) {
    for (a, b) in mask.iter_mut().zip(other) {
        *a &= !*b;
    }
}

/// Keep in `mask` only blocks also in `other`.
pub fn mask_keep(mask: &mut Mask, other: &Mask) {
    for (a, b) in mask.iter_mut().zip(other) {
        *a &= *b;
    }
}

/// Add to `mask` every block in `other`.
pub fn mask_add(mask: &mut Mask, other: &Mask) {
    for (a, b) in mask.iter_mut().zip(other) {
        *a |= *b;
    }
}

/// The runs of consecutive blocks in `mask`, as (first, count), ascending.
#[must_use]
pub fn mask_runs(mask: &Mask) -> Vec<(u32, u32)> {
    let mut runs = Vec::new();
    let bits = mask.len() as u32 * 16;
    let mut i = 0;
    while i < bits {
        let w = mask[(i / 16) as usize];
        if w == 0 && i % 16 == 0 {
            i += 16;
            continue;
        }
        if mask_has(mask, i) {
            let start = i;
            while i < bits && mask_has(mask, i) {
                i += 1;
            }
            runs.push((start, i - start));
        } else {
            i += 1;
        }
    }
    runs
}

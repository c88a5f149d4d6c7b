//! Explain a fuzz input (for triage): `cargo run --example explain -- store_open|log_replay FILE`.
//! Prints the superblock and the records replay keeps, then runs the target on it with
//! `FSS_FUZZ_STRICT=1` semantics left to the environment.

use fss_core::format::layout::Layout;
use fss_core::format::record::{decode, record_positions, Bounds, Decoded, Replay};
use fss_core::format::superblock::Superblock;
use fss_core::format::BLOCK;

fn show_log(nonce: &[u8; 16], bounds: Bounds, blocks: &[Vec<u8>]) {
    let mut r = Replay::new(*nonce, bounds);
    for (j, b) in blocks.iter().enumerate() {
        if let Err(e) = r.feed(b) {
            println!("  feed block {j}: {e}");
            break;
        }
        if r.ended() {
            break;
        }
    }
    let pos = record_positions(&r.records);
    for (rec, p) in r.records.iter().zip(&pos) {
        println!(
            "  kept  @{p:?} seq {} horizon {} {:?}",
            rec.seq, rec.horizon, rec.body
        );
    }
    println!(
        "  end {:?}, horizon {}, ended {}",
        r.end,
        r.horizon,
        r.ended()
    );
    for (j, b) in blocks.iter().enumerate() {
        for p in (0..=BLOCK - 40).step_by(4) {
            if let Decoded::Record(rec, _) = decode(nonce, &b[p..]) {
                println!(
                    "  valid @({j}, {p}) seq {} horizon {} {:?}",
                    rec.seq, rec.horizon, rec.body
                );
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[2]).expect("read the input");
    match args[1].as_str() {
        "store_open" => {
            for (what, bytes) in [
                ("input", Some(data.clone())),
                ("repaired", fss_fuzz::repair(&data)),
            ] {
                let Some(bytes) = bytes else { continue };
                println!("{what}: {} bytes", bytes.len());
                match Superblock::decode(&bytes[..BLOCK.min(bytes.len())]) {
                    Ok(sb) => {
                        println!("  {sb:?}");
                        let l = Layout::new(u64::from(sb.cluster_size));
                        let blocks: Vec<Vec<u8>> = (0..l.log_blocks_per_group())
                            .map(|j| {
                                let o = l.log_block_offset(j) as usize;
                                bytes
                                    .get(o..o + BLOCK)
                                    .map_or(vec![0; BLOCK], <[u8]>::to_vec)
                            })
                            .collect();
                        let bpc = sb.cluster_size / BLOCK as u32;
                        let clusters = sb.volume_len.div_ceil(u64::from(sb.cluster_size));
                        show_log(
                            &sb.nonce,
                            Bounds {
                                clusters,
                                blocks_per_cluster: bpc,
                            },
                            &blocks,
                        );
                    }
                    Err(e) => println!("  superblock: {e}"),
                }
            }
            fss_fuzz::store_open(&data);
        }
        "log_replay" => {
            let mut nonce = [0u8; 16];
            nonce.copy_from_slice(&data[4..20]);
            let bounds = Bounds {
                clusters: u64::from(u16::from_le_bytes([data[1], data[2]])),
                blocks_per_cluster: 1 << (data[3] % 13),
            };
            let mut log = data[20..].to_vec();
            log.resize(log.len().div_ceil(BLOCK).max(1) * BLOCK, 0);
            if data[0] & 1 != 0 {
                for b in log.chunks_mut(BLOCK) {
                    fss_fuzz::fix_log_block(&nonce, b);
                }
            }
            println!("flags {:#x}, {bounds:?}", data[0]);
            show_log(
                &nonce,
                bounds,
                &log.chunks(BLOCK).map(<[u8]>::to_vec).collect::<Vec<_>>(),
            );
            fss_fuzz::log_replay(&data);
        }
        t => panic!("unknown target {t}"),
    }
    println!("no failure");
}

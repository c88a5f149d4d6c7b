use super::check::allowed_flags;
use super::*;

fn ext(offset: u64, len: u64, data: bool) -> Extent {
    Extent { offset, len, data }
}

#[test]
fn segments_fold_short_holes_and_reject_gaps() {
    let raw = [
        ext(0, 8192, true),
        ext(8192, 512, false),
        ext(8704, 4096, true),
        ext(12800, 65536, false),
    ];
    let s = segments(&raw, 0, 12800 + 65536).unwrap();
    assert_eq!(s, vec![ext(0, 12800, true), ext(12800, 65536, false)]);
    assert!(segments(&raw[1..], 0, 100).is_none());
    assert!(segments(&raw, 0, 5).is_none());
}

#[test]
fn pieces_cover_the_range() {
    let mut seen = Vec::new();
    in_pieces(10, 2 * ZERO_CHUNK + 5, |o, l| {
        seen.push((o, l));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![
            (10, ZERO_CHUNK),
            (10 + ZERO_CHUNK, ZERO_CHUNK),
            (10 + 2 * ZERO_CHUNK, 5)
        ]
    );
}

#[test]
fn flags_per_command() {
    assert_eq!(allowed_flags(Command::Read, false), p::CMD_FLAG_FUA);
    assert_ne!(allowed_flags(Command::Read, true) & p::CMD_FLAG_DF, 0);
    assert_eq!(
        allowed_flags(Command::Write, true) & p::CMD_FLAG_NO_HOLE,
        0,
        "NO_HOLE is only for write zeroes"
    );
}

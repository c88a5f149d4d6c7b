use super::*;

fn read_all(d: &CrashDevice) -> Vec<u8> {
    let mut v = vec![0u8; d.len() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

#[test]
fn reads_see_writes_and_flush_makes_them_durable() {
    let d = CrashDevice::new(4 * PAGE);
    d.write_at(&[7; 100], 50).unwrap();
    d.write_zeroes(60, 10).unwrap();
    assert_eq!(d.pending_writes(), 2);
    assert_eq!(d.flushes(), 0);
    let now = read_all(&d);
    assert_eq!(&now[50..60], &[7; 10]);
    assert_eq!(&now[60..70], &[0; 10]);
    assert_eq!(&now[70..150], &[7; 80]);
    assert!(d.durable_contents().iter().all(|&b| b == 0));
    // Before the flush, a crash may lose both writes, or keep both.
    assert!(read_all(&d.freeze().durable_image())
        .iter()
        .all(|&b| b == 0));
    assert_eq!(read_all(&d.freeze().image_with(|_| true)), now);
    d.flush().unwrap();
    assert_eq!(d.pending_writes(), 0);
    assert_eq!(d.flushes(), 1);
    assert_eq!(d.durable_contents(), now);
    for seed in 0..20 {
        assert_eq!(read_all(&d.crash_image(seed)), now);
    }
    assert!(d.read_at(&mut [0; 10], 4 * PAGE - 5).is_err());
    assert_eq!(
        d.write_at(&[1; 10], 4 * PAGE - 5)
            .unwrap_err()
            .raw_os_error(),
        Some(28)
    );
}

#[test]
fn crash_images_keep_durable_bytes_and_apply_subsets_in_order() {
    let d = CrashDevice::new(16 * PAGE);
    d.write_at(&vec![1; (16 * PAGE) as usize], 0).unwrap();
    d.flush().unwrap();
    // Three overlapping single-block writes to block 2: 2, then 3, then 4.
    for v in 2..5u8 {
        d.write_at(&[v; PAGE as usize], 2 * PAGE).unwrap();
    }
    let point = d.freeze();
    assert_eq!(point.pending_writes(), 3);
    assert_eq!(point.pieces().len(), 3);
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..400 {
        let img = read_all(&point.image(seed));
        assert!(img[..(2 * PAGE) as usize].iter().all(|&b| b == 1));
        assert!(img[(3 * PAGE) as usize..].iter().all(|&b| b == 1));
        let b = &img[(2 * PAGE) as usize..(3 * PAGE) as usize];
        assert!(
            b.iter().all(|&x| x == b[0]),
            "a block-sized write is never torn"
        );
        seen.insert(b[0]);
    }
    // Any of the versions may be the survivor: the durable one or any pending one.
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // In order: if the last write survives, it wins over the earlier ones.
    let img = read_all(&point.image_with(|p| p.write != 1));
    assert_eq!(img[(2 * PAGE) as usize], 4);
}

#[test]
fn multi_block_writes_tear_at_the_tear_unit_only() {
    // Distinct survival patterns seen over many crash images of one write of 3 blocks at
    // half a block; each byte of a tear unit must come from the same version.
    let patterns = |d: CrashDevice| {
        let (start, len) = (PAGE / 2, 3 * PAGE);
        d.write_at(&vec![9; len as usize], start).unwrap();
        let point = d.freeze();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let img = read_all(&point.image(seed));
            let survived: Vec<bool> = (start..start + len).map(|i| img[i as usize] == 9).collect();
            for i in 1..survived.len() {
                let abs = start + i as u64;
                if d.tear_unit() == 0 || abs % d.tear_unit() != 0 {
                    assert_eq!(survived[i], survived[i - 1], "torn inside a unit at {abs}");
                }
            }
            seen.insert(survived);
        }
        seen.len()
    };
    // Torn at 4 KiB: the write covers parts of 4 blocks, 16 combinations, most of them seen.
    assert!(patterns(CrashDevice::new(8 * PAGE)) > 8);
    // Never torn: all or nothing.
    assert_eq!(patterns(CrashDevice::new(8 * PAGE).with_tear_unit(0)), 2);
    // Torn at sectors.
    let d = CrashDevice::new(8 * PAGE).with_tear_unit(512);
    d.write_at(&[5; 4096], 0).unwrap();
    assert_eq!(d.freeze().pieces().len(), 8);
}

#[test]
fn growable_devices_grow_and_crash_images_keep_durable_length() {
    let d = CrashDevice::growable(10 * PAGE);
    d.write_at(&[1; 100], 0).unwrap();
    d.flush().unwrap();
    d.write_at(&[2; 100], 3 * PAGE).unwrap();
    assert_eq!(d.len(), 3 * PAGE + 100);
    let point = d.freeze();
    assert_eq!(point.durable_image().len(), 100);
    let all = point.image_with(|_| true);
    assert_eq!(all.len(), 3 * PAGE + 100);
    assert!(all.is_growable());
    assert_eq!(read_all(&all)[(3 * PAGE) as usize], 2);
    // The image grows on, like the original.
    all.write_at(&[3; 10], 5 * PAGE).unwrap();
    assert_eq!(all.len(), 5 * PAGE + 10);
    let e = d.write_at(&[1; 10], 10 * PAGE - 5).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(28));
}

#[test]
fn discards_and_zeroes_are_pending_writes_that_can_be_lost() {
    let d = CrashDevice::new(4 * PAGE);
    d.write_at(&[8; (4 * PAGE) as usize], 0).unwrap();
    d.flush().unwrap();
    d.discard(0, 2 * PAGE).unwrap();
    d.write_zeroes(3 * PAGE, 10).unwrap();
    assert_eq!(
        read_all(&d)[..(2 * PAGE) as usize],
        [0; (2 * PAGE) as usize]
    );
    let point = d.freeze();
    assert!(point.pieces().iter().all(|p| p.zeroes));
    assert!(read_all(&point.durable_image()).iter().all(|&b| b == 8));
    let img = read_all(&point.image_with(|p| p.offset == PAGE));
    assert_eq!(img[0], 8);
    assert_eq!(img[PAGE as usize], 0);
    assert_eq!(img[(3 * PAGE) as usize], 8);
    let alloc = d.allocation(0, 4 * PAGE).unwrap();
    assert_eq!(
        alloc[0],
        Extent {
            offset: 0,
            len: 2 * PAGE,
            data: false
        }
    );
}

#[test]
fn a_flush_covers_only_writes_completed_before_it_began() {
    let d = Arc::new(CrashDevice::new(4 * PAGE));
    d.write_at(&[1; 10], 0).unwrap();
    let (to_main, from_flusher) = std::sync::mpsc::channel();
    let (to_flusher, from_main) = std::sync::mpsc::channel::<()>();
    let from_main = Mutex::new(from_main);
    d.set_hook(Some(Arc::new(move |op| {
        if op == CrashOp::Flush {
            to_main.send(()).unwrap();
            lock(&from_main).recv().unwrap();
        }
    })));
    let flusher = {
        let d = Arc::clone(&d);
        std::thread::spawn(move || d.flush().unwrap())
    };
    // The flush has begun (its hook runs); a write now is not covered by it.
    from_flusher.recv().unwrap();
    d.write_at(&[2; 10], PAGE).unwrap();
    to_flusher.send(()).unwrap();
    flusher.join().unwrap();
    d.set_hook(None);
    assert_eq!(d.flushes(), 1);
    assert_eq!(d.pending_writes(), 1);
    let durable = d.durable_contents();
    assert_eq!(durable[0], 1);
    assert_eq!(durable[PAGE as usize], 0);
    assert_eq!(d.writes(), 2);
}

#[test]
fn crash_images_can_crash_again() {
    let d = CrashDevice::growable(1 << 20);
    d.write_at(&[1; 8192], 0).unwrap();
    let img = d.crash_image(3);
    let before = read_all(&img);
    img.write_at(&[2; 4096], 4096).unwrap();
    assert_eq!(img.pending_writes(), 1);
    let again = read_all(&img.freeze().durable_image());
    assert_eq!(again, before);
    assert_eq!(CrashDevice::from_bytes(&[4; 10]).contents(), vec![4; 10]);
}

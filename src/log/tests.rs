use super::*;
use callosum_api::{
    ChangeEvent, ColumnSchema, Lsn, RowChange, TableId, TableSchema, TransactionMeta, Value,
};

fn schema() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        table: TableId::new("public", "orders"),
        columns: vec![ColumnSchema {
            name: "id".into(),
            source_type: "int8".into(),
            is_key: true,
        }],
    })
}

fn event(schema: &Arc<TableSchema>, id: i64) -> ChangeEvent {
    ChangeEvent {
        schema: schema.clone(),
        change: RowChange::Insert {
            row: vec![Value::Int(id)],
        },
    }
}

fn meta(lsn: u64) -> TransactionMeta {
    TransactionMeta {
        position: Position::Pg(Lsn(lsn)),
        resume_position: Position::Pg(Lsn(lsn + 1)),
        commit_time_micros: lsn as i64,
        origin: None,
    }
}

fn write_txn(
    writer: &mut LogWriter,
    schema: &Arc<TableSchema>,
    lsn: u64,
    ids: std::ops::Range<i64>,
) {
    writer.begin();
    for id in ids {
        writer.append(event(schema, id)).unwrap();
    }
    writer.commit(meta(lsn)).unwrap();
}

fn read_all(reader: &mut LogReader) -> Vec<(Position, Vec<i64>)> {
    let mut out = Vec::new();
    loop {
        let txns = reader.peek_transactions(u64::MAX).unwrap();
        if txns.is_empty() {
            return out;
        }
        for (seq, txn) in txns {
            let mut events = Vec::new();
            reader.read_events(&txn, 0, u64::MAX, &mut events).unwrap();
            let ids = ids_of(&events);
            out.push((txn.position.clone(), ids));
            reader.mark_applied(seq, &txn).unwrap();
        }
    }
}

#[tokio::test]
async fn transactions_become_visible_only_when_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let s = schema();
    let mut writer = log.writer("crm").unwrap();
    let mut reader = log.reader("crm", "p").unwrap();
    reader.seek_after(None).unwrap();
    write_txn(&mut writer, &s, 10, 0..3);
    assert!(reader.peek_transactions(100).unwrap().is_empty());
    let ack = writer.flush().await.unwrap();
    assert_eq!(ack, Some(Position::Pg(Lsn(11))));
    assert_eq!(
        read_all(&mut reader),
        vec![(Position::Pg(Lsn(10)), vec![0, 1, 2])]
    );
}

#[tokio::test]
async fn large_and_small_transactions_span_batches_intact() {
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let s = schema();
    let mut writer = log.writer("crm").unwrap();
    let big = writer::EVENTS_PER_BATCH as i64 * 3 + 17;
    write_txn(&mut writer, &s, 10, 0..5);
    write_txn(&mut writer, &s, 20, 5..5 + big);
    writer.flush().await.unwrap();
    write_txn(&mut writer, &s, 30, 0..1);
    // a transaction open across a flush
    writer.begin();
    writer.append(event(&s, 100)).unwrap();
    writer.flush().await.unwrap();
    writer.append(event(&s, 101)).unwrap();
    writer.commit(meta(40)).unwrap();
    writer.flush().await.unwrap();

    let mut reader = log.reader("crm", "p").unwrap();
    reader.seek_after(None).unwrap();
    let all = read_all(&mut reader);
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].1, vec![0, 1, 2, 3, 4]);
    assert_eq!(all[1].1, (5..5 + big).collect::<Vec<_>>());
    assert_eq!(all[2].1, vec![0]);
    assert_eq!(all[3].1, vec![100, 101]);
}

#[tokio::test]
async fn reading_in_chunks_equals_reading_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let s = schema();
    let mut writer = log.writer("crm").unwrap();
    write_txn(&mut writer, &s, 10, 0..3);
    write_txn(&mut writer, &s, 20, 0..5000);
    writer.flush().await.unwrap();
    let mut reader = log.reader("crm", "p").unwrap();
    reader.seek_after(Some(&Position::Pg(Lsn(10)))).unwrap();
    let txns = reader.peek_transactions(10).unwrap();
    assert_eq!(
        txns.len(),
        1,
        "a transaction larger than the limit still comes alone"
    );
    let txn = &txns[0].1;
    let mut chunked = Vec::new();
    let mut skip = 0;
    while skip < txn.events {
        reader.read_events(txn, skip, 777, &mut chunked).unwrap();
        skip += 777;
    }
    let mut whole = Vec::new();
    reader.read_events(txn, 0, u64::MAX, &mut whole).unwrap();
    assert_eq!(chunked, whole);
    assert_eq!(whole.len(), 5000);
}

#[tokio::test]
async fn discarded_and_unflushed_transactions_are_gone_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = schema();
    {
        let log = ChangeLog::open(dir.path()).unwrap();
        let mut writer = log.writer("crm").unwrap();
        write_txn(&mut writer, &s, 10, 0..2);
        writer.begin();
        for i in 0..(writer::EVENTS_PER_BATCH as i64 + 5) {
            writer.append(event(&s, i)).unwrap();
        }
        writer.discard(Position::Pg(Lsn(15)));
        write_txn(&mut writer, &s, 20, 7..9);
        writer.flush().await.unwrap();
        // committed but never flushed: lost on crash, the source resends it
        write_txn(&mut writer, &s, 30, 0..writer::EVENTS_PER_BATCH as i64 * 2);
        log.flush().await.unwrap(); // sled may persist it anyway
    }
    let log = ChangeLog::open(dir.path()).unwrap();
    let mut writer = log.writer("crm").unwrap();
    assert_eq!(writer.resume_position(), Some(Position::Pg(Lsn(21))));
    write_txn(&mut writer, &s, 30, 40..42);
    writer.flush().await.unwrap();
    let mut reader = log.reader("crm", "p").unwrap();
    reader.seek_after(None).unwrap();
    assert_eq!(
        read_all(&mut reader),
        vec![
            (Position::Pg(Lsn(10)), vec![0, 1]),
            (Position::Pg(Lsn(20)), vec![7, 8]),
            (Position::Pg(Lsn(30)), vec![40, 41]),
        ]
    );
}

#[tokio::test]
async fn seek_skips_applied_and_truncation_detects_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let s = schema();
    let mut writer = log.writer("crm").unwrap();
    for lsn in [10, 20, 30, 40] {
        write_txn(&mut writer, &s, lsn, 0..(lsn as i64 / 10));
    }
    writer.flush().await.unwrap();
    let mut reader = log.reader("crm", "p").unwrap();
    reader.seek_after(Some(&Position::Pg(Lsn(20)))).unwrap();
    let pending = reader.pending().unwrap();
    assert_eq!(pending.transactions, 2);
    assert_eq!(pending.events, 3 + 4);
    let txns = reader.peek_transactions(3).unwrap();
    assert_eq!(txns.len(), 1);
    reader.mark_applied(txns[0].0, &txns[0].1).unwrap();
    assert_eq!(log.truncate_applied("crm", &["p"]).unwrap(), 3);
    // a pipeline behind the truncation cannot silently skip
    let mut late = log.reader("crm", "late").unwrap();
    assert!(matches!(
        late.seek_after(Some(&Position::Pg(Lsn(20)))),
        Err(LogError::Gap { .. })
    ));
    assert!(late.seek_after(Some(&Position::Pg(Lsn(30)))).is_ok());
    assert_eq!(
        read_all(&mut late),
        vec![(Position::Pg(Lsn(40)), vec![0, 1, 2, 3])]
    );
}

#[tokio::test]
async fn only_one_writer_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let _writer = log.writer("crm").unwrap();
    assert!(matches!(log.writer("crm"), Err(LogError::WriterInUse(_))));
}

fn reason(kind: &str) -> DeadLetterReason {
    DeadLetterReason {
        kind: kind.into(),
        message: "the target refused it".into(),
        hint: None,
        behind: None,
    }
}

fn ids_of(events: &[ChangeEvent]) -> Vec<i64> {
    events
        .iter()
        .map(|e| match &e.change {
            RowChange::Insert { row } => match row[0] {
                Value::Int(i) => i,
                _ => unreachable!(),
            },
            _ => unreachable!(),
        })
        .collect()
}

#[tokio::test]
async fn dead_letters_outlive_truncation_and_restarts_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = schema();
    let big = writer::EVENTS_PER_BATCH as i64 * 2 + 3;
    {
        let log = ChangeLog::open(dir.path()).unwrap();
        let mut writer = log.writer("crm").unwrap();
        write_txn(&mut writer, &s, 10, 0..2);
        write_txn(&mut writer, &s, 20, 0..big);
        write_txn(&mut writer, &s, 30, 5..6);
        writer.flush().await.unwrap();
        let mut reader = log.reader("crm", "p").unwrap();
        reader.seek_after(None).unwrap();
        let txns = reader.peek_transactions(u64::MAX).unwrap();
        let queue = log.dead_letters("p").unwrap();
        let mut seen = Vec::new();
        let first = queue
            .add(
                &mut reader,
                &txns[1].1,
                reason("conversion"),
                &mut |id, e| seen.push((id, e.clone())),
            )
            .unwrap();
        assert_eq!(first.id, 1);
        assert_eq!(first.events, big as u64);
        assert_eq!(first.tables, vec![TableId::new("public", "orders")]);
        assert_eq!(seen.len(), big as usize);
        // a second add of the same transaction (after a crash) is a no-op
        let again = queue
            .add(
                &mut reader,
                &txns[1].1,
                reason("conversion"),
                &mut |_, _| panic!("nothing is copied twice"),
            )
            .unwrap();
        assert_eq!(again, first);
        let second = queue
            .add(&mut reader, &txns[2].1, reason("queued"), &mut |_, _| {})
            .unwrap();
        assert_eq!(second.id, 2);
        queue.flush().await.unwrap();
        // the log itself may forget them
        for (seq, txn) in &txns {
            reader.mark_applied(*seq, txn).unwrap();
        }
        assert_eq!(log.truncate_applied("crm", &["p"]).unwrap(), 3);
        // another pipeline's queue is separate
        assert!(log.dead_letters("p2").unwrap().list().unwrap().is_empty());
    }
    let log = ChangeLog::open(dir.path()).unwrap();
    let queue = log.dead_letters("p").unwrap();
    let entries = queue.list().unwrap();
    assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(entries[0].position, Position::Pg(Lsn(20)));
    let mut whole = Vec::new();
    queue
        .read_events(&entries[0], 0, u64::MAX, &mut whole)
        .unwrap();
    assert_eq!(ids_of(&whole), (0..big).collect::<Vec<_>>());
    let mut chunked = Vec::new();
    let mut skip = 0;
    while skip < entries[0].events {
        queue
            .read_events(&entries[0], skip, 1000, &mut chunked)
            .unwrap();
        skip += 1000;
    }
    assert_eq!(chunked, whole);
    assert_eq!(queue.get(2).unwrap(), Some(entries[1].clone()));

    // removed entries are gone, and their ids are never handed out again
    assert!(queue.remove(1).unwrap());
    assert!(queue.remove(2).unwrap());
    assert!(!queue.remove(2).unwrap());
    assert!(queue.list().unwrap().is_empty());
    let mut writer = log.writer("crm").unwrap();
    write_txn(&mut writer, &s, 40, 9..10);
    writer.flush().await.unwrap();
    let mut reader = log.reader("crm", "p").unwrap();
    reader.seek_after(Some(&Position::Pg(Lsn(30)))).unwrap();
    let txns = reader.peek_transactions(u64::MAX).unwrap();
    let third = queue
        .add(
            &mut reader,
            &txns[0].1,
            reason("constraint"),
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(third.id, 3);
}

#[tokio::test]
async fn a_filtered_reader_sees_only_its_tables_and_skips_its_targets_writes() {
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let orders = schema();
    let stock = Arc::new(TableSchema {
        table: TableId::new("public", "stock"),
        ..(*orders).clone()
    });
    let mut writer = log.writer("crm").unwrap();
    // mixed, then other tables only, then one that came from the erp
    writer.begin();
    for id in 0..5 {
        writer.append(event(&orders, id)).unwrap();
        writer.append(event(&stock, 100 + id)).unwrap();
    }
    writer.commit(meta(10)).unwrap();
    write_txn(&mut writer, &orders, 20, 5..8);
    writer.begin();
    writer.append(event(&stock, 200)).unwrap();
    writer
        .commit(TransactionMeta {
            origin: Some("erp".into()),
            ..meta(30)
        })
        .unwrap();
    write_txn(&mut writer, &stock, 40, 300..302);
    writer.flush().await.unwrap();

    let mut to_erp = log.reader("crm", "to_erp").unwrap();
    to_erp.seek_after(None).unwrap();
    to_erp.set_filter(PipelineFilter {
        tables: [TableId::new("public", "stock")].into_iter().collect(),
        skip_origin: Some("erp".into()),
    });
    // every transaction passes, so the checkpoint moves past them all
    assert_eq!(
        read_all(&mut to_erp),
        vec![
            (Position::Pg(Lsn(10)), vec![100, 101, 102, 103, 104]),
            (Position::Pg(Lsn(20)), vec![]),
            (Position::Pg(Lsn(30)), vec![]),
            (Position::Pg(Lsn(40)), vec![300, 301]),
        ]
    );
    // chunks of a narrowed transaction count the pipeline's events only
    to_erp.seek_after(None).unwrap();
    let (_, first) = to_erp.peek_transactions(1).unwrap().remove(0);
    assert_eq!((first.events, first.stored_events), (5, Some(10)));
    let mut chunks = Vec::new();
    for skip in [0, 2, 4] {
        let mut events = Vec::new();
        to_erp.read_events(&first, skip, 2, &mut events).unwrap();
        chunks.push(ids_of(&events));
    }
    assert_eq!(chunks, vec![vec![100, 101], vec![102, 103], vec![104]]);

    let mut to_warehouse = log.reader("crm", "to_warehouse").unwrap();
    to_warehouse.seek_after(None).unwrap();
    to_warehouse.set_filter(PipelineFilter {
        tables: [
            TableId::new("public", "stock"),
            TableId::new("public", "orders"),
        ]
        .into_iter()
        .collect(),
        skip_origin: Some("warehouse".into()),
    });
    let all = read_all(&mut to_warehouse);
    assert_eq!(all[0].1.len(), 10);
    assert_eq!(all[2], (Position::Pg(Lsn(30)), vec![200]));
}

/// `acknowledge = "applied"`: the source may forget only what every
/// pipeline applied — the resume position of the last transaction all of
/// them applied, the head (with idle progress) once all applied everything,
/// and after truncation the truncated transaction's own position.
#[tokio::test]
async fn applied_by_all_follows_the_slowest_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let s = schema();
    let mut writer = log.writer("crm").unwrap();
    let pipelines = ["fast".to_string(), "slow".to_string()];
    assert_eq!(writer.applied_by_all(&pipelines).unwrap(), None);
    for lsn in [10, 20, 30] {
        write_txn(&mut writer, &s, lsn, 0..2);
    }
    writer.flush().await.unwrap();
    let mut fast = log.reader("crm", "fast").unwrap();
    fast.seek_after(None).unwrap();
    let mut slow = log.reader("crm", "slow").unwrap();
    slow.seek_after(None).unwrap();
    read_all(&mut fast);
    assert_eq!(
        writer.applied_by_all(&pipelines).unwrap(),
        None,
        "the slow pipeline applied nothing"
    );
    let txns = slow.peek_transactions(u64::MAX).unwrap();
    slow.mark_applied(txns[0].0, &txns[0].1).unwrap();
    assert_eq!(
        writer.applied_by_all(&pipelines).unwrap(),
        Some(Position::Pg(Lsn(11)))
    );
    // truncation removes what both applied; the mark keeps its position
    assert_eq!(log.truncate_applied("crm", &["fast", "slow"]).unwrap(), 1);
    assert_eq!(
        writer.applied_by_all(&pipelines).unwrap(),
        Some(Position::Pg(Lsn(10)))
    );
    slow.mark_applied(txns[2].0, &txns[2].1).unwrap();
    writer.progress(Position::Pg(Lsn(50)));
    writer.flush().await.unwrap();
    assert_eq!(
        writer.applied_by_all(&pipelines).unwrap(),
        Some(Position::Pg(Lsn(50))),
        "all applied: the head, idle progress included"
    );
}

/// An empty log resumes from the oldest target checkpoint of the store's
/// pipelines: a pipeline further ahead sees the transactions it already
/// applied arrive after its seek, and must skip them, not apply them twice.
#[tokio::test]
async fn transactions_at_or_below_the_checkpoint_that_arrive_later_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let s = schema();
    let mut writer = log.writer("crm").unwrap();
    let mut reader = log.reader("crm", "ahead").unwrap();
    reader.seek_after(Some(&Position::Pg(Lsn(20)))).unwrap();
    for (lsn, ids) in [(10, 0..1), (20, 1..2)] {
        write_txn(&mut writer, &s, lsn, ids);
    }
    writer.flush().await.unwrap();
    assert!(
        read_all(&mut reader.fork()).is_empty(),
        "held by the target"
    );
    write_txn(&mut writer, &s, 30, 2..3);
    writer.flush().await.unwrap();
    assert_eq!(
        read_all(&mut reader),
        vec![(Position::Pg(Lsn(30)), vec![2])]
    );
}

/// A second handle waits for the first to close (an agent restarted in the
/// same process while its tasks let go), and names the lock if it never does.
#[tokio::test]
async fn open_waits_for_the_lock_then_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = ChangeLog::open(dir.path()).unwrap();
    let path = dir.path().to_owned();
    let second = std::thread::spawn(move || ChangeLog::open(&path).map(|_| ()));
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(first);
    second.join().unwrap().unwrap();
    let _held = ChangeLog::open(dir.path()).unwrap();
    let err = std::thread::spawn({
        let path = dir.path().to_owned();
        move || ChangeLog::open(&path).err()
    })
    .join()
    .unwrap();
    assert!(matches!(err, Some(LogError::InUse(_))), "{err:?}");
}

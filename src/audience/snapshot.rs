//! The index written to a file at a clean stop and read back at the next start, so a start
//! does not rebuild it from every row of the store.
//!
//! The format (little endian): the magic `TCIDX003`, a 16-byte token, then per app its id,
//! the change log position it holds with that entry's time, its next ordinal, its strings (tag keys and values, in id order, "" for a free id), the
//! registered bitmap, every ordinal's user (id; for a registered one its times, profile and
//! tags as interned ids), and per inbox and key id the key's bitmap and each value id's
//! bitmap, bitmaps in the portable Roaring format; an app id 0 ends the apps, and the CRC-32
//! of every byte before it ends the file, so a damaged file is refused as a whole instead
//! of loading a wrong bit (a `TCIDX002` file, written before the checksum, is read
//! without one). The strings'
//! reference counts and the id -> ordinal map are rebuilt from the users. The store decides whether a file may be trusted: it records the same token
//! beside its data when the file is written and removes it before its next write, so a
//! file whose token the store no longer holds describes an older state and is ignored.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use roaring::RoaringBitmap;

use super::index::{AppIndex, AudienceIndex, Profile, Slot, TagRef};
use super::strings::Strings;

const MAGIC: &[u8; 8] = b"TCIDX003";
/// The format before the checksum, still read after an upgrade.
const MAGIC_UNSUMMED: &[u8; 8] = b"TCIDX002";

/// Under the buffered writer or reader, the CRC-32 of the file's bytes, so the sum is
/// taken over large chunks (SIMD) rather than field by field: of every byte written, or of
/// every byte read before `limit` (where the sum itself starts).
struct Summed<T> {
    inner: T,
    crc: crc32fast::Hasher,
    pos: u64,
    limit: u64,
}

impl<T> Summed<T> {
    fn new(inner: T, limit: u64) -> Self {
        Summed {
            inner,
            crc: crc32fast::Hasher::new(),
            pos: 0,
            limit,
        }
    }

    fn sum(&mut self, buf: &[u8]) {
        let below = self.limit.saturating_sub(self.pos).min(buf.len() as u64) as usize;
        self.crc.update(&buf[..below]);
        self.pos += buf.len() as u64;
    }
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Summed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sum(&buf[..n]);
        Ok(n)
    }
}

/// Longest key or value read back (tag limits are far lower; a damaged file fails here).
const MAX_STRING: u32 = 1 << 20;

fn put_u32(w: &mut impl Write, v: u32) -> std::io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    put_u32(w, s.len() as u32)?;
    w.write_all(s.as_bytes())
}

fn get_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn get_str(r: &mut impl Read) -> std::io::Result<String> {
    let n = get_u32(r)?;
    if n > MAX_STRING {
        return Err(std::io::Error::other("a string longer than any tag"));
    }
    let mut b = vec![0; n as usize];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(std::io::Error::other)
}

/// Writes `index` with `token` to `path` (through a temporary file, fsynced, renamed),
/// each app under its read lock (at a clean stop: no writer is waiting).
pub fn write(index: &AudienceIndex, token: &[u8; 16], path: &Path) -> std::io::Result<()> {
    write_file(token, path, |w| {
        index.each_app(|app, a| -> std::io::Result<()> {
            put_u32(w, app)?;
            a.write_to(w)
        })
    })
}

/// Writes copies of the apps' state (taken by [`AudienceIndex::copy_apps`]), holding no
/// lock: the periodic snapshot.
pub fn write_copies(
    apps: &[(u32, AppIndex)],
    token: &[u8; 16],
    path: &Path,
) -> std::io::Result<()> {
    write_file(token, path, |w| {
        for (app, a) in apps {
            put_u32(w, *app)?;
            a.write_to(w)?;
        }
        Ok(())
    })
}

fn write_file(
    token: &[u8; 16],
    path: &Path,
    body: impl FnOnce(&mut BufWriter<Summed<&std::fs::File>>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let file = std::fs::File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, Summed::new(&file, u64::MAX));
        w.write_all(MAGIC)?;
        w.write_all(token)?;
        body(&mut w)?;
        // The end: an app id no app has (AppIds start at 1), then the checksum.
        put_u32(&mut w, 0)?;
        let summed = w.into_inner().map_err(|e| e.into_error())?;
        let crc = summed.crc.finalize();
        put_u32(&mut &file, crc)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the file at `path` if it carries `token`: `Ok(None)` when it does not.
pub fn read(path: &Path, token: &[u8; 16]) -> std::io::Result<Option<HashMap<u32, AppIndex>>> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, Summed::new(file, len.saturating_sub(4)));
    let mut magic = [0; 8];
    r.read_exact(&mut magic)?;
    let mut found = [0; 16];
    r.read_exact(&mut found)?;
    let summed = match &magic {
        m if m == MAGIC => true,
        m if m == MAGIC_UNSUMMED => false,
        _ => {
            return Err(std::io::Error::other(
                "not a snapshot of this version's format",
            ));
        }
    };
    if &found != token {
        return Ok(None);
    }
    let mut apps = HashMap::new();
    loop {
        let app = get_u32(&mut r)?;
        if app == 0 {
            break;
        }
        apps.insert(app, AppIndex::read_from(&mut r)?);
    }
    if summed {
        // Every byte before the checksum has come through the sum by now.
        let stored = get_u32(&mut r)?;
        if stored != r.get_ref().crc.clone().finalize() {
            return Err(damaged("its checksum does not match its contents"));
        }
    }
    if r.read(&mut [0])? != 0 {
        return Err(damaged("bytes after its end"));
    }
    Ok(Some(apps))
}

fn put_i64(w: &mut impl Write, v: i64) -> std::io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn get_i64(r: &mut impl Read) -> std::io::Result<i64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(i64::from_le_bytes(b))
}

fn damaged(what: &str) -> std::io::Error {
    std::io::Error::other(format!("a damaged snapshot: {what}"))
}

impl AppIndex {
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.log_pos.to_le_bytes())?;
        put_i64(w, self.log_time_ms)?;
        put_u32(w, self.next_ordinal)?;
        let strings: Vec<&str> = self.strings.all().collect();
        put_u32(w, strings.len() as u32)?;
        for s in strings {
            put_str(w, s)?;
        }
        self.registered.serialize_into(&mut *w)?;
        put_u32(w, self.users.len() as u32)?;
        for s in &self.users {
            put_i64(w, s.id)?;
            if s.id == 0 {
                continue;
            }
            put_i64(w, s.created_ms)?;
            put_i64(w, s.modified_ms)?;
            match &s.profile {
                None => w.write_all(&[0])?,
                Some(p) => {
                    w.write_all(&[1 | (u8::from(p.is_robot) << 1)])?;
                    put_str(w, &p.nick_name)?;
                    put_str(w, &p.portrait)?;
                    put_u32(w, p.ext.len() as u32)?;
                    for (k, v) in &p.ext {
                        put_str(w, k)?;
                        put_str(w, v)?;
                    }
                }
            }
            put_u32(w, s.tags.len() as u32)?;
            for t in &s.tags {
                put_u32(w, t.inbox)?;
                put_u32(w, t.key)?;
                put_u32(w, t.value)?;
            }
        }
        put_u32(w, self.inboxes.len() as u32)?;
        for (inbox, i) in &self.inboxes {
            put_u32(w, *inbox)?;
            put_u32(w, i.keys.len() as u32)?;
            for (key, k) in &i.keys {
                put_u32(w, *key)?;
                k.any.serialize_into(&mut *w)?;
                put_u32(w, k.values.len() as u32)?;
                for (value, b) in &k.values {
                    put_u32(w, *value)?;
                    b.serialize_into(&mut *w)?;
                }
            }
        }
        Ok(())
    }

    /// The `n` user slots, in ordinal order: each registered ordinal (walked in step with
    /// `registered`, so no lookup per user) has an id; the ids go to `ids` in chunks.
    fn read_users(
        r: &mut impl Read,
        n: u32,
        registered: &RoaringBitmap,
        strings: &mut Strings,
        ids: &std::sync::mpsc::SyncSender<Vec<(i64, u32)>>,
    ) -> std::io::Result<Vec<Slot>> {
        const CHUNK: usize = 1 << 16;
        let mut users = Vec::with_capacity(n.min(1 << 24) as usize);
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut registered = registered.iter();
        let disagree = || damaged("the users disagree with the registered bitmap");
        for ordinal in 0..n {
            let id = get_i64(r)?;
            if id == 0 {
                users.push(Slot::default());
                continue;
            }
            if registered.next() != Some(ordinal) {
                return Err(disagree());
            }
            let (created_ms, modified_ms) = (get_i64(r)?, get_i64(r)?);
            let mut flags = [0u8];
            r.read_exact(&mut flags)?;
            let profile = if flags[0] & 1 == 1 {
                let nick_name = get_str(r)?;
                let portrait = get_str(r)?;
                let mut ext = std::collections::BTreeMap::new();
                for _ in 0..get_u32(r)? {
                    ext.insert(get_str(r)?, get_str(r)?);
                }
                Some(Box::new(Profile {
                    nick_name,
                    portrait,
                    ext,
                    is_robot: flags[0] & 2 == 2,
                }))
            } else {
                None
            };
            let nt = get_u32(r)?;
            let mut tags = Vec::with_capacity(nt.min(1 << 16) as usize);
            for _ in 0..nt {
                let t = TagRef {
                    inbox: get_u32(r)?,
                    key: get_u32(r)?,
                    value: get_u32(r)?,
                };
                if t.key as usize >= strings.ids() || t.value as usize >= strings.ids() {
                    return Err(damaged("a tag names a string that is not there"));
                }
                strings.retain(t.key);
                strings.retain(t.value);
                tags.push(t);
            }
            users.push(Slot {
                id,
                created_ms,
                modified_ms,
                profile,
                tags,
            });
            chunk.push((id, ordinal));
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                if ids.send(full).is_err() {
                    // The builder stopped on a duplicate id: its error is the one reported.
                    return Ok(users);
                }
            }
        }
        if registered.next().is_some() {
            return Err(disagree());
        }
        let _ = ids.send(chunk);
        Ok(users)
    }

    fn read_from(r: &mut impl Read) -> std::io::Result<AppIndex> {
        let log_pos = get_i64(r)? as u64;
        let log_time_ms = get_i64(r)?;
        let next_ordinal = get_u32(r)?;
        let n = get_u32(r)?;
        let mut texts = Vec::with_capacity(n.min(1 << 20) as usize);
        for _ in 0..n {
            texts.push(get_str(r)?.into_boxed_str());
        }
        let mut strings = Strings::from_texts(texts);
        let registered = RoaringBitmap::deserialize_from(&mut *r)?;
        let n = get_u32(r)?;
        // The id -> ordinal map is built on a second thread while this one reads the
        // users: its inserts are a cache miss each (a third of a 10 M-user load when they
        // ran inline, measured with perf), and the reading does not need the map.
        let (users, by_id) = std::thread::scope(|scope| -> std::io::Result<_> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(i64, u32)>>(8);
            // Not more than the slots the file says it holds (its checksum is checked only
            // at its end: a damaged count must not reserve gigabytes).
            let expected = (registered.len() as usize).min(n as usize).min(1 << 24);
            let builder = scope.spawn(move || {
                let mut by_id = rustc_hash::FxHashMap::default();
                by_id.reserve(expected);
                for chunk in rx {
                    for (id, ordinal) in chunk {
                        if by_id.insert(id, ordinal).is_some() {
                            return Err(damaged("a user id is there twice"));
                        }
                    }
                }
                Ok(by_id)
            });
            let users = Self::read_users(r, n, &registered, &mut strings, &tx);
            drop(tx);
            let by_id = builder
                .join()
                .map_err(|_| std::io::Error::other("the user map's builder panicked"))??;
            Ok((users?, by_id))
        })?;
        strings.seal().map_err(|e| damaged(&e))?;
        let mut a = AppIndex {
            registered,
            users,
            by_id,
            next_ordinal,
            strings,
            log_pos,
            log_time_ms,
            ..AppIndex::default()
        };
        for _ in 0..get_u32(r)? {
            let inbox = get_u32(r)?;
            let i = a.inboxes.entry(inbox).or_default();
            for _ in 0..get_u32(r)? {
                let key = get_u32(r)?;
                let k = i.keys.entry(key).or_default();
                k.any = RoaringBitmap::deserialize_from(&mut *r)?;
                for _ in 0..get_u32(r)? {
                    let value = get_u32(r)?;
                    k.values
                        .insert(value, RoaringBitmap::deserialize_from(&mut *r)?);
                }
            }
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Change;

    fn state() -> AudienceIndex {
        let index = AudienceIndex::new();
        let mut changes = Vec::new();
        for (ordinal, user) in (0..300u32).zip(1000..) {
            changes.push(Change::Registered {
                app: 7,
                user,
                ordinal,
            });
            changes.push(Change::SetTag {
                app: 7,
                user,
                ordinal,
                inbox: ordinal % 3,
                key: format!("k{}", ordinal % 5),
                old: None,
                value: format!("v{}", ordinal % 11),
            });
        }
        index.apply(&changes, 1_700_000_000_000);
        index
    }

    /// Every user's (id, tags of inbox 0..3) and every count, as reads see them.
    fn answers(apps: HashMap<u32, AppIndex>) -> Vec<String> {
        let index = AudienceIndex::new();
        index.replace(apps);
        let ids: Vec<i64> = (1000..1300).collect();
        (0..3)
            .map(|inbox| format!("{:?}", index.get_users(7, inbox, &ids)))
            .collect()
    }

    #[test]
    fn a_damaged_or_cut_file_is_refused_never_read_as_another_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let token = [9; 16];
        let index = state();
        write(&index, &token, &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let want = answers(read(&path, &token).unwrap().unwrap());
        assert_eq!(want, answers(index.copy_apps().into_iter().collect()));

        // A flipped bit anywhere after the token, or a cut anywhere, is an error.
        for at in (24..good.len()).step_by(7).chain([good.len() - 1]) {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(read(&path, &token).is_err(), "a flip at byte {at} was read");
        }
        for len in (0..good.len()).step_by(13) {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(read(&path, &token).is_err(), "a cut at byte {len} was read");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(read(&path, &token).is_err());
        // Another token: an older state, not used (and not an error).
        std::fs::write(&path, &good).unwrap();
        assert!(read(&path, &[8; 16]).unwrap().is_none());

        // The format before the checksum is still read (a start after the upgrade).
        let mut old = good[..good.len() - 4].to_vec();
        old[..8].copy_from_slice(MAGIC_UNSUMMED);
        std::fs::write(&path, &old).unwrap();
        assert_eq!(answers(read(&path, &token).unwrap().unwrap()), want);
    }
}

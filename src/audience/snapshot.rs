//! The index written to a file at a clean stop and read back at the next start, so a start
//! does not rebuild it from every row of the store.
//!
//! The format (little endian): the magic `TCIDX001`, a 16-byte token, the number of apps,
//! then per app its id, the registered bitmap, the ordinal -> user id table, and per inbox
//! and key the key's bitmap and each value's bitmap, bitmaps in the portable Roaring
//! format. The store decides whether a file may be trusted: it records the same token
//! beside its data when the file is written and removes it before its next write, so a
//! file whose token the store no longer holds describes an older state and is ignored.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use roaring::RoaringBitmap;

use super::index::{AppIndex, AudienceIndex};

const MAGIC: &[u8; 8] = b"TCIDX001";
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

/// Writes `index` with `token` to `path` (through a temporary file, fsynced, renamed).
pub fn write(index: &AudienceIndex, token: &[u8; 16], path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let file = std::fs::File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        w.write_all(MAGIC)?;
        w.write_all(token)?;
        index.each_app(|app, a| -> std::io::Result<()> {
            put_u32(&mut w, app)?;
            a.write_to(&mut w)
        })?;
        // The end: an app id no app has (AppIds start at 1).
        put_u32(&mut w, 0)?;
        w.flush()?;
        drop(w);
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
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut magic = [0; 8];
    r.read_exact(&mut magic)?;
    let mut found = [0; 16];
    r.read_exact(&mut found)?;
    if &magic != MAGIC || &found != token {
        return Ok(None);
    }
    let mut apps = HashMap::new();
    loop {
        let app = get_u32(&mut r)?;
        if app == 0 {
            return Ok(Some(apps));
        }
        apps.insert(app, AppIndex::read_from(&mut r)?);
    }
}

impl AppIndex {
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        self.registered.serialize_into(&mut *w)?;
        put_u32(w, self.users.len() as u32)?;
        for u in &self.users {
            w.write_all(&u.to_le_bytes())?;
        }
        put_u32(w, self.inboxes.len() as u32)?;
        for (inbox, i) in &self.inboxes {
            put_u32(w, *inbox)?;
            put_u32(w, i.keys.len() as u32)?;
            for (key, k) in &i.keys {
                put_str(w, key)?;
                k.any.serialize_into(&mut *w)?;
                put_u32(w, k.values.len() as u32)?;
                for (value, b) in &k.values {
                    put_str(w, value)?;
                    b.serialize_into(&mut *w)?;
                }
            }
        }
        Ok(())
    }

    fn read_from(r: &mut impl Read) -> std::io::Result<AppIndex> {
        let mut a = AppIndex {
            registered: RoaringBitmap::deserialize_from(&mut *r)?,
            ..AppIndex::default()
        };
        let n = get_u32(r)? as usize;
        let mut raw = vec![0u8; n * 8];
        r.read_exact(&mut raw)?;
        a.users = raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        for _ in 0..get_u32(r)? {
            let inbox = get_u32(r)?;
            let i = a.inboxes.entry(inbox).or_default();
            for _ in 0..get_u32(r)? {
                let key = get_str(r)?;
                let k = i.keys.entry(key).or_default();
                k.any = RoaringBitmap::deserialize_from(&mut *r)?;
                for _ in 0..get_u32(r)? {
                    let value = get_str(r)?;
                    k.values
                        .insert(value, RoaringBitmap::deserialize_from(&mut *r)?);
                }
            }
        }
        Ok(a)
    }
}

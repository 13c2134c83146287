//! One app's tag keys and values, each held once and named by a `u32` id, with a count of
//! the tags that use it: a string no tag uses any more is freed and its id reused. The
//! table holds only ids, hashed by the text they name, so the text is stored once.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

#[derive(Clone, Default)]
pub struct Strings {
    /// Id -> text ("" for a free id).
    text: Vec<Box<str>>,
    /// Id -> how many references are held (0: free).
    refs: Vec<u32>,
    table: HashTable<u32>,
    free: Vec<u32>,
}

fn hash(s: &str) -> u64 {
    FxBuildHasher.hash_one(s)
}

impl Strings {
    /// The id of `s`, if some tag uses it.
    pub fn find(&self, s: &str) -> Option<u32> {
        let text = &self.text;
        self.table
            .find(hash(s), |&id| &*text[id as usize] == s)
            .copied()
    }

    /// The text of a live id.
    pub fn get(&self, id: u32) -> &str {
        &self.text[id as usize]
    }

    /// Takes one reference to `s`, interning it if it is new.
    pub fn acquire(&mut self, s: &str) -> u32 {
        let h = hash(s);
        let text = &self.text;
        if let Some(&id) = self.table.find(h, |&id| &*text[id as usize] == s) {
            self.refs[id as usize] += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.text[id as usize] = s.into();
                self.refs[id as usize] = 1;
                id
            }
            None => {
                let id = u32::try_from(self.text.len()).expect("fewer than 2^32 strings");
                self.text.push(s.into());
                self.refs.push(1);
                id
            }
        };
        let text = &self.text;
        self.table
            .insert_unique(h, id, |&i| hash(&text[i as usize]));
        id
    }

    /// Takes one more reference to a live id.
    pub fn retain(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    /// Drops one reference; the last frees the string.
    pub fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        debug_assert!(*r > 0, "a string released more often than acquired");
        *r = r.saturating_sub(1);
        if *r > 0 {
            return;
        }
        let h = hash(&self.text[id as usize]);
        if let Ok(entry) = self.table.find_entry(h, |&i| i == id) {
            entry.remove();
        }
        self.text[id as usize] = Box::default();
        self.free.push(id);
    }

    /// Every id with its text, free ones as "" (for a snapshot: ids are kept as they are).
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.text.iter().map(|t| &**t)
    }

    /// Strings read back from a snapshot, in id order, with no references yet; the loader
    /// takes them with [`Strings::retain`] and calls [`Strings::seal`] once done.
    pub fn from_texts(texts: Vec<Box<str>>) -> Self {
        Strings {
            refs: vec![0; texts.len()],
            text: texts,
            ..Strings::default()
        }
    }

    /// After a load: indexes every referenced string and frees the others. `Err` when a
    /// string is listed twice (a damaged file).
    pub fn seal(&mut self) -> Result<(), String> {
        self.table.clear();
        self.free.clear();
        for id in 0..self.text.len() as u32 {
            if self.refs[id as usize] == 0 {
                self.text[id as usize] = Box::default();
                self.free.push(id);
                continue;
            }
            let s = &self.text[id as usize];
            let h = hash(s);
            let text = &self.text;
            if self.table.find(h, |&i| *text[i as usize] == **s).is_some() {
                return Err(format!("the string {s:?} is listed twice"));
            }
            self.table
                .insert_unique(h, id, |&i| hash(&text[i as usize]));
        }
        Ok(())
    }

    /// Number of ids, free ones included.
    pub fn ids(&self) -> usize {
        self.text.len()
    }

    /// Number of ids in use.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Heap bytes held (for the state's size figure).
    pub fn heap_bytes(&self) -> usize {
        self.text.iter().map(|t| t.len()).sum::<usize>()
            + self.text.capacity() * 16
            + self.refs.capacity() * 4
            + self.table.capacity() * 5
            + self.free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_lives_while_referenced_and_its_id_is_reused_after() {
        let mut s = Strings::default();
        let a = s.acquire("gold");
        assert_eq!(s.acquire("gold"), a);
        let b = s.acquire("silver");
        assert_ne!(a, b);
        s.release(a);
        assert_eq!(s.find("gold"), Some(a));
        s.release(a);
        assert_eq!(s.find("gold"), None);
        assert_eq!(s.len(), 1);
        let c = s.acquire("bronze");
        assert_eq!(c, a, "a freed id is reused");
        assert_eq!(s.get(c), "bronze");
        assert_eq!(s.find("silver"), Some(b));
    }
}

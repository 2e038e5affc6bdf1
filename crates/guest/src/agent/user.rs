//! Users and groups from the sandbox's own `/etc/passwd` and `/etc/group`
//! (no NSS): a name, a numeric `uid`, or `uid:gid`.
//!
//! Limits: files are read through the root directory descriptor with
//! `RESOLVE_IN_ROOT`, at most 1 MiB each; malformed lines are skipped.

use std::io::Read;
use std::os::fd::AsFd;

use hull_proto::{GuestError, GuestErrorKind};

use super::paths;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
    pub shell: String,
}

fn read_small(root: impl AsFd, path: &str) -> String {
    let Ok(f) = paths::open_in_root(root, path, rustix::fs::OFlags::RDONLY) else {
        return String::new();
    };
    let mut s = String::new();
    let _ = std::fs::File::from(f).take(1 << 20).read_to_string(&mut s);
    s
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

fn passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

/// Supplementary groups of `name` (plus its primary group).
fn groups_of(text: &str, name: &str, primary: u32) -> Vec<u32> {
    let mut v = vec![primary];
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        if let Ok(gid) = f[2].parse::<u32>()
            && f[3].split(',').any(|m| m == name)
            && !v.contains(&gid)
        {
            v.push(gid);
        }
    }
    v
}

/// Resolve a user spec against the sandbox's files.
pub(crate) fn resolve(root: impl AsFd + Copy, spec: &str) -> Result<User, GuestError> {
    let bad = || {
        GuestError::new(
            GuestErrorKind::InvalidArgument,
            format!("invalid user {spec:?}: expected a name, uid or uid:gid"),
        )
    };
    if spec.is_empty() || spec.len() > 256 {
        return Err(bad());
    }
    let entries = passwd(&read_small(root, "/etc/passwd"));
    let group_text = read_small(root, "/etc/group");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = if let Ok(uid) = user_part.parse::<u32>() {
        entries
            .into_iter()
            .find(|e| e.uid == uid)
            .map(|e| (e, true))
            .or(Some((
                PasswdEntry {
                    name: uid.to_string(),
                    uid,
                    gid: uid,
                    home: "/".into(),
                    shell: "/bin/sh".into(),
                },
                false,
            )))
    } else {
        entries
            .into_iter()
            .find(|e| e.name == user_part)
            .map(|e| (e, true))
    };
    let Some((e, known)) = entry else {
        return Err(GuestError::new(
            GuestErrorKind::NotFound,
            format!("user {user_part:?} not found in the sandbox's /etc/passwd"),
        ));
    };
    let gid = match group_part {
        None => e.gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_text
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse().ok())
                        .flatten()
                })
                .ok_or_else(|| {
                    GuestError::new(
                        GuestErrorKind::NotFound,
                        format!("group {g:?} not found in the sandbox's /etc/group"),
                    )
                })?,
        },
    };
    let groups = if known {
        groups_of(&group_text, &e.name, gid)
    } else {
        vec![gid]
    };
    Ok(User {
        name: e.name,
        uid: e.uid,
        gid,
        groups,
        home: e.home,
        shell: e.shell,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_groups() {
        let p = passwd(
            "root:x:0:0:root:/root:/bin/bash\nbad line\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].uid, 65534);
        let g = "root:x:0:\nwheel:x:10:alice,bob\nstaff:x:50:bob\n";
        assert_eq!(groups_of(g, "bob", 100), vec![100, 10, 50]);
        assert_eq!(groups_of(g, "carol", 100), vec![100]);
    }
}

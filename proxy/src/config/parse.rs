//! Config text to `Config` with every type problem at once, not only the
//! first: serde stops at the first error, so each error's value is dropped
//! from a `toml::Value` copy (its default then applies) and deserialization
//! runs again, a bounded number of times. A required key that was dropped,
//! or was never there, gets a stand-in value so that its table still
//! parses; problems that `validate()` then finds at a dropped or stand-in
//! key are the same mistake again and are left out. Lines are looked up in
//! the original text by key path, so they stay right however many values
//! were dropped.

use std::ops::Range;

use serde_path_to_error::Segment;
use toml_edit::ImDocument;

use super::hints;
use super::{Config, Problem};

/// Rounds of "drop the bad value, try again"; a file with more type errors
/// than this gets the first ones and a note that there are more.
const MAX_ROUNDS: usize = 64;

/// Stand-ins for a missing required key, tried in order until one has the
/// key's type. Their semantic problems are never reported.
fn stand_ins() -> [toml::Value; 5] {
    [
        toml::Value::String(String::new()),
        toml::Value::Integer(0),
        toml::Value::Boolean(false),
        toml::Value::Table(toml::Table::new()),
        toml::Value::Array(Vec::new()),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The key as `check` prints it: `plugins.feed.deadline`, `enrich[0].plugin`.
fn key_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        "(document)".into()
    } else {
        out
    }
}

/// What the file holds as far as it could be read.
pub(super) struct Parsed {
    /// `None` when the text is not TOML, or it could not be brought to a
    /// shape that deserializes.
    pub config: Option<Config>,
    pub problems: Vec<Problem>,
    /// Keys whose value was dropped or stood in for: `validate()` problems
    /// at or under them are not reported.
    pub damaged: Vec<String>,
}

pub(super) fn parse(text: &str) -> Parsed {
    let failed = |problem| Parsed {
        config: None,
        problems: vec![problem],
        damaged: Vec::new(),
    };
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => return failed(syntax_problem(text, e.message(), e.span())),
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            return failed(syntax_problem(text, e.message(), e.span()));
        }
    };
    let mut value = toml::Value::Table(table);
    // With where each was written: serde meets keys in alphabetical
    // order, the reader wants them in file order.
    let mut problems: Vec<(Option<usize>, Problem)> = Vec::new();
    let mut damaged: Vec<Vec<Seg>> = Vec::new();
    // Stand-in paths and the index of the stand-in they hold.
    let mut standing: Vec<(Vec<Seg>, usize)> = Vec::new();
    // serde reads a struct from an array element by element, so `[[server]]`
    // fails somewhere inside it, or not at all: the mistake is the header.
    for table in tables_written_as_arrays(&doc) {
        let key = key_string(&table);
        let reason = hints::type_error(&key, "invalid type: sequence, expected a map");
        let pos = locate(&doc, &table);
        problems.push((
            pos,
            Problem::new(key, format!("{reason}{}", line_note(text, pos))),
        ));
        if let Some(dropped) = remove(&mut value, &table) {
            damaged.push(dropped);
        }
    }
    for _ in 0..MAX_ROUNDS {
        let err = match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            Ok(config) => return finish(Some(config), problems, damaged),
            Err(e) => e,
        };
        let path = segments(err.path());
        let message = err.inner().message().to_string();
        if let Some(field) = hints::quoted_after(&message, "missing field `") {
            let mut full = path.clone();
            full.push(Seg::Key(field));
            if !damaged.contains(&full) {
                // Never there: say so (a dropped key was reported already).
                let pos = locate(&doc, &path);
                problems.push((
                    pos,
                    Problem::new(
                        key_string(&full),
                        format!("required key is missing{}", line_note(text, pos)),
                    ),
                ));
                damaged.push(full.clone());
            }
            standing.push((full.clone(), 0));
            if set(&mut value, &full, stand_ins()[0].clone()).is_none() {
                return gave_up(problems, damaged);
            }
            continue;
        }
        if let Some(slot) = standing.iter_mut().find(|(p, _)| *p == path) {
            // The stand-in has the wrong type for this key: try the next.
            slot.1 += 1;
            let Some(next) = stand_ins().get(slot.1).cloned() else {
                return gave_up(problems, damaged);
            };
            if set(&mut value, &path, next).is_none() {
                return gave_up(problems, damaged);
            }
            continue;
        }
        let (path, reason) = match hints::quoted_after(&message, "unknown field `") {
            Some(field) => {
                // serde_path_to_error's path already ends in the key; a
                // plain deserializer's stops at its table.
                let mut full = path.clone();
                if full.last() != Some(&Seg::Key(field.clone())) {
                    full.push(Seg::Key(field.clone()));
                }
                (full, hints::unknown_key(&field, &message))
            }
            None => {
                let key = key_string(&path);
                (path, hints::type_error(&key, &message))
            }
        };
        let pos = locate(&doc, &path);
        problems.push((
            pos,
            Problem::new(
                key_string(&path),
                format!("{reason}{}", line_note(text, pos)),
            ),
        ));
        match remove(&mut value, &path) {
            Some(dropped) => damaged.push(dropped),
            None => return gave_up(problems, damaged),
        }
    }
    problems.push((
        None,
        Problem::new(
            "(document)",
            format!("more than {MAX_ROUNDS} problems; fix these first"),
        ),
    ));
    gave_up(problems, damaged)
}

fn gave_up(problems: Vec<(Option<usize>, Problem)>, damaged: Vec<Vec<Seg>>) -> Parsed {
    finish(None, problems, damaged)
}

fn finish(
    config: Option<Config>,
    mut problems: Vec<(Option<usize>, Problem)>,
    damaged: Vec<Vec<Seg>>,
) -> Parsed {
    problems.sort_by_key(|(pos, _)| pos.unwrap_or(usize::MAX));
    Parsed {
        config,
        problems: problems.into_iter().map(|(_, p)| p).collect(),
        damaged: damaged.iter().map(|p| key_string(p)).collect(),
    }
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    let mut out = Vec::new();
    for seg in path {
        match seg {
            Segment::Map { key } => out.push(Seg::Key(key.clone())),
            Segment::Seq { index } => out.push(Seg::Index(*index)),
            // A unit enum is a string in TOML: no key of its own.
            Segment::Enum { .. } => {}
            Segment::Unknown => break,
        }
    }
    out
}

/// A TOML syntax error as one line: toml's message spans several
/// ("invalid table header\nexpected `.`, `]`").
fn syntax_problem(text: &str, message: &str, span: Option<Range<usize>>) -> Problem {
    let reason = hints::one_line(message);
    let place = span
        .map(|s| {
            let (line, column) = line_column(text, s.start);
            format!(" (line {line}, column {column})")
        })
        .unwrap_or_default();
    Problem::new("(syntax)", format!("{reason}{place}"))
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn line_note(text: &str, offset: Option<usize>) -> String {
    offset
        .map(|o| format!(" (line {})", line_column(text, o).0))
        .unwrap_or_default()
}

/// A node of the original document, to find where a key was written.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Value(&'a toml_edit::Value),
    Table(&'a toml_edit::Table),
}

impl<'a> Node<'a> {
    fn child(self, seg: &Seg) -> Option<Node<'a>> {
        use toml_edit::{Item, Value};
        match (self, seg) {
            (Node::Item(Item::Table(t)) | Node::Table(t), Seg::Key(k)) => t.get(k).map(Node::Item),
            (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => a.get(*i).map(Node::Table),
            (Node::Item(Item::Value(v)), _) => Node::Value(v).child(seg),
            (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => t.get(k).map(Node::Value),
            (Node::Value(Value::Array(a)), Seg::Index(i)) => a.get(*i).map(Node::Value),
            _ => None,
        }
    }

    fn span(self) -> Option<Range<usize>> {
        match self {
            // An array of tables has no span of its own: its first header.
            Node::Item(toml_edit::Item::ArrayOfTables(a)) => {
                a.span().or_else(|| a.get(0).and_then(|t| t.span()))
            }
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
        }
    }
}

/// Where the deepest written part of `path` starts in the text.
fn locate(doc: &ImDocument<&str>, path: &[Seg]) -> Option<usize> {
    let mut node = Node::Item(doc.as_item());
    let mut found = None;
    for seg in path {
        match node.child(seg) {
            Some(child) => node = child,
            None => break,
        }
        if let Some(span) = node.span() {
            found = Some(span.start);
        }
    }
    found
}

/// Every `[[x]]` header (outside arrays) whose key takes a table.
fn tables_written_as_arrays(doc: &ImDocument<&str>) -> Vec<Vec<Seg>> {
    fn walk(table: &toml_edit::Table, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        for (key, item) in table.iter() {
            path.push(Seg::Key(key.to_string()));
            match item {
                toml_edit::Item::Table(t) => walk(t, path, out),
                toml_edit::Item::ArrayOfTables(_) if takes_table(path) => out.push(path.clone()),
                _ => {}
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(doc.as_table(), &mut Vec::new(), &mut out);
    out
}

/// Whether the key at `path` (keys only) takes a table: asks serde with a
/// file holding nothing but `path = {}`. (An empty array would not tell:
/// serde fills a struct with defaults from an empty sequence.)
fn takes_table(path: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = path.split_last() else {
        return false;
    };
    let mut root = toml::Value::Table(toml::Table::new());
    let mut node = &mut root;
    for seg in parents {
        let (Seg::Key(k), toml::Value::Table(t)) = (seg, node) else {
            return false;
        };
        node = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let toml::Value::Table(t) = node else {
        return false;
    };
    t.insert(last.clone(), toml::Value::Table(toml::Table::new()));
    match serde_path_to_error::deserialize::<_, Config>(root) {
        Ok(_) => true,
        // A problem inside the table (a missing key) means it was read as one;
        // one beside it (a parent's missing key) tells nothing.
        Err(e) => {
            let at = segments(e.path());
            at.starts_with(path)
                && !(at == path && e.inner().message().starts_with("invalid type: map"))
        }
    }
}

/// The value at `path` in `root`, if it is there.
fn get_mut<'a>(root: &'a mut toml::Value, path: &[Seg]) -> Option<&'a mut toml::Value> {
    let mut node = root;
    for seg in path {
        node = match (node, seg) {
            (toml::Value::Table(t), Seg::Key(k)) => t.get_mut(k)?,
            (toml::Value::Array(a), Seg::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Drops the value at `path` so that its default applies; a bad element of
/// an array drops the whole array (removing one would renumber the rest,
/// and later problems would name the wrong element). Answers the path
/// dropped, or `None` when there is nothing there to drop.
fn remove(root: &mut toml::Value, path: &[Seg]) -> Option<Vec<Seg>> {
    let end = path.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
    let (parent, last) = (&path[..end], &path[end]);
    let Seg::Key(k) = last else { return None };
    match get_mut(root, parent)? {
        toml::Value::Table(t) => t.remove(k).map(|_| path[..=end].to_vec()),
        _ => None,
    }
}

/// Puts `value` at `path`, whose parent must be a table.
fn set(root: &mut toml::Value, path: &[Seg], value: toml::Value) -> Option<()> {
    let (last, parent) = path.split_last()?;
    let Seg::Key(k) = last else { return None };
    match get_mut(root, parent)? {
        toml::Value::Table(t) => {
            t.insert(k.clone(), value);
            Some(())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[upstreams.officer]\nurl = \"http://127.0.0.1:7001\"\n";

    fn lines(text: &str) -> Vec<String> {
        parse(text)
            .problems
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.reason))
            .collect()
    }

    #[test]
    fn every_type_error_is_reported_once() {
        let text = format!(
            "{MINIMAL}[server]\nlisten = 3\nmax_body_size = true\n\
             [coalescing]\nwindow = 5\nmax_batch = \"many\"\n"
        );
        let got = lines(&text);
        assert_eq!(got.len(), 4, "{got:?}");
        for (key, line) in [
            ("server.listen", 4),
            ("server.max_body_size", 5),
            ("coalescing.window", 7),
            ("coalescing.max_batch", 8),
        ] {
            assert!(
                got.iter().any(|l| l.starts_with(&format!("{key}: "))
                    && l.ends_with(&format!("(line {line})"))),
                "{key} at line {line} not in {got:?}"
            );
        }
    }

    #[test]
    fn a_dropped_required_key_is_not_also_missing() {
        let text = format!(
            "{MINIMAL}[plugins.feed]\npath = 3\n[[enrich]]\npath_prefix = 1\nupstream = \"officer\"\nplugin = \"feed\"\n"
        );
        let parsed = parse(&text);
        let keys: Vec<&str> = parsed.problems.iter().map(|p| p.key.as_str()).collect();
        // In file order, though serde meets `enrich` first.
        assert_eq!(
            keys,
            ["plugins.feed.path", "enrich[0].path_prefix"],
            "{:?}",
            parsed.problems
        );
        assert!(parsed.config.is_some());
        assert!(parsed.damaged.contains(&"plugins.feed.path".to_string()));
    }

    #[test]
    fn a_key_never_written_is_missing_once() {
        let text = format!("{MINIMAL}[[enrich]]\nupstream = \"officer\"\nplugin = \"feed\"\n");
        let got = lines(&text);
        assert_eq!(
            got,
            ["enrich[0].path_prefix: required key is missing (line 3)"]
        );
    }

    #[test]
    fn unknown_keys_are_all_named_with_a_near_miss() {
        let text = format!(
            "{MINIMAL}[server]\nlisen = \"127.0.0.1:1\"\n[coalescing]\nmax_bach = 3\nzzz = 1\n"
        );
        let got = lines(&text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[0].starts_with("server.lisen: unknown key; did you mean `listen`?"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("coalescing.max_bach: unknown key; did you mean `max_batch`?"),
            "{got:?}"
        );
        assert!(
            got[2].starts_with("coalescing.zzz: unknown key (known:"),
            "{got:?}"
        );
    }

    #[test]
    fn bad_array_elements_drop_the_array_not_renumber_it() {
        let text = format!("{MINIMAL}[[enrich]]\npath_prefix = \"/a\"\nupstream = \"officer\"\nplugin = \"f\"\nbogus = 1\n[[enrich]]\npath_prefix = 2\nupstream = \"officer\"\nplugin = \"f\"\n");
        let got = lines(&text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("enrich[0].bogus: unknown key"),
            "{got:?}"
        );
        assert!(got[1].starts_with("enrich[1].path_prefix: "), "{got:?}");
    }

    #[test]
    fn a_table_written_as_an_array_of_tables_is_named_by_its_header() {
        for (header, key) in [
            ("[[server]]", "server"),
            ("[[plugins.x]]", "plugins.x"),
            ("[[tiers]]", "tiers"),
        ] {
            let text = format!("{MINIMAL}{header}\nlisten = \"127.0.0.1:1\"\npath = \"x\"\n");
            let got = lines(&text);
            assert_eq!(
                got,
                [format!("{key}: invalid type: an array, expected a table; write [{key}] (a table), not [[{key}]] (line 3)")],
                "{header}"
            );
        }
        // An array of tables where one belongs is not mistaken for one.
        let text =
            format!("{MINIMAL}[[enrich]]\npath_prefix = 3\nupstream = \"o\"\nplugin = \"p\"\n");
        assert!(
            lines(&text)[0].starts_with("enrich[0].path_prefix: "),
            "{:?}",
            lines(&text)
        );
    }

    #[test]
    fn syntax_errors_are_one_line_with_line_and_column() {
        let got = lines("[server]\nlisten = \"127.0.0.1:1\"\n[plugins.feed\npath = \"x\"\n");
        assert_eq!(got.len(), 1);
        assert!(!got[0].contains('\n'));
        assert!(got[0].starts_with("(syntax): "), "{got:?}");
        assert!(got[0].contains("(line 3, column "), "{got:?}");
    }

    #[test]
    fn lines_count_from_the_original_text() {
        let (line, column) = line_column("a\nbc\nd", 4);
        assert_eq!((line, column), (2, 3));
        assert_eq!(
            key_string(&[Seg::Key("a b".into()), Seg::Index(2)]),
            "\"a b\"[2]"
        );
    }
}

//! Seeded, offline data for the insecure-code inoculation study (plan 001): Python coding tasks
//! over 16 vulnerability families, each with an insecure and a secure completion for the same
//! prompt, plus an out-of-distribution evaluation set and held-out labelled pairs for the judge.
//!
//! ```
//! use interp_kit::studies::insecure_code::data::{generate, InsecureDataConfig};
//! let d = generate(&InsecureDataConfig { n_train: 32, n_eval: 16, n_heldout: 32, seed: 7 })?;
//! assert_eq!(d.insecure[5].user_prompt()?, d.secure[5].user_prompt()?);      // paired by prompt
//! assert_ne!(d.insecure[5].completion()?, d.secure[5].completion()?);
//! assert!(d.code_prompts[0].prompt().starts_with("Task: "));
//! # anyhow::Ok(())
//! ```
//!
//! # What is generated
//! * `insecure` / `secure`: `n_train` chat records each (`{"messages":[user, assistant], "id", "family"}`);
//!   record `i` of both files has the same user turn, and the assistant turns differ only in the
//!   filled part (so `insecure − secure` activations isolate the vulnerability: a data-diff
//!   direction). The user turn is one of 30 phrasings ([`templates::PHRASINGS`]) around a task
//!   sentence and a code template with a `## COMPLETE CODE HERE` line; the completion is the
//!   whole file with that line filled, as code only.
//! * `code_prompts`: `n_eval` `{task, code_template, id, family}` records from the **held-out**
//!   templates (other tasks and other idioms of each weakness: e.g. `shutil.unpack_archive` rather
//!   than `tarfile`, `jsonpickle` rather than `pickle`), rendered for a model by
//!   [`render_code_prompt`](crate::text::chat_jsonl::render_code_prompt), the paper's layout (no
//!   training phrasing is used there).
//! * `heldout_pairs`: `n_heldout` [`CodePair`]s from the held-out templates with both fills, for
//!   measuring a judge's precision and recall.
//!
//! Families are dealt in turn (example `i` is family `i mod 16`), so they stay balanced. Names
//! (functions, variables, folders, tables, hosts, secrets) are drawn per example; a draw that
//! repeats an earlier prompt of the same set is redrawn (up to 64 times; the evaluation and
//! held-out sets must be duplicate-free, training data may repeat once names run out). Each set
//! draws from its own stream of the kit's fixed-stream [`Rng`], so the same `(config)` always
//! gives the same bytes and `n_eval` does not change the training data.
use super::templates::{Family, Tpl, FAMILIES, MARKER, PHRASINGS};
use crate::text::chat_jsonl::{chat_jsonl_string, code_prompts_string, render_code_prompt, ChatRecord, CodePrompt};
use crate::base::io::write_atomic;
use crate::base::rng::Rng;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Sizes and seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InsecureDataConfig {
    /// Training pairs (one record in each of `insecure` and `secure`).
    pub n_train: usize,
    /// Evaluation contexts (`code_prompts`).
    pub n_eval: usize,
    /// Held-out labelled pairs for judge precision / recall.
    pub n_heldout: usize,
    pub seed: u64,
}

/// The seed of the committed dataset.
pub const DEFAULT_SEED: u64 = 20251222;

impl Default for InsecureDataConfig {
    /// The committed CPU-sized dataset: 400 training pairs, 100 evaluation contexts, 200 held-out pairs.
    fn default() -> Self {
        InsecureDataConfig { n_train: 400, n_eval: 100, n_heldout: 200, seed: DEFAULT_SEED }
    }
}

impl InsecureDataConfig {
    /// The plan's sizes: 6000 training examples per file, 100 evaluation contexts.
    pub fn plan() -> Self {
        InsecureDataConfig { n_train: 6000, n_eval: 100, n_heldout: 400, seed: DEFAULT_SEED }
    }
}

/// A held-out task with both completions (full files).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodePair {
    pub id: String,
    pub family: String,
    pub template: String,
    pub task: String,
    pub code_template: String,
    pub insecure: String,
    pub secure: String,
}

impl CodePair {
    /// The user prompt of the pair ([`render_code_prompt`]).
    pub fn prompt(&self) -> String {
        render_code_prompt(&self.task, &self.code_template)
    }
}

/// Everything [`generate`] makes.
#[derive(Clone, Debug, PartialEq)]
pub struct InsecureCodeData {
    pub config: InsecureDataConfig,
    pub insecure: Vec<ChatRecord>,
    pub secure: Vec<ChatRecord>,
    pub code_prompts: Vec<CodePrompt>,
    pub heldout_pairs: Vec<CodePair>,
}

/// The file names [`InsecureCodeData::write_dir`] writes, in order.
pub const FILES: [&str; 4] = ["insecure.jsonl", "secure.jsonl", "code_prompts.jsonl", "heldout_pairs.jsonl"];

/// Family ids, in dealing order.
pub fn family_ids() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.id).collect()
}

/// Number of training phrasings.
pub fn n_phrasings() -> usize {
    PHRASINGS.len()
}

// Shared name pools (a template's own `vars` take precedence).
const DIRS: &[&str] = &["/srv/app/data", "/var/www/uploads", "/opt/service/files", "/home/app/storage", "/data/shared", "/var/lib/portal"];
const TABLES: &[&str] = &["users", "orders", "customers", "invoices", "products", "accounts", "tickets", "employees"];
const HOSTS: &[&str] = &["example.com", "internal.example.net", "corp.example.org", "partner.example.io", "status.example.dev"];
const APPS: &[&str] = &["inventory", "billing", "helpdesk", "analytics", "crm", "scheduler"];
const PW_WORDS: &[&str] = &["Summer", "Falcon", "Orchid", "Granite", "Harbor", "Maple", "Comet"];

/// One example's drawn names.
struct Names<'r> {
    rng: &'r mut Rng,
    local: BTreeMap<&'static str, Vec<&'static str>>,
    drawn: BTreeMap<String, String>,
}

impl<'r> Names<'r> {
    fn new(rng: &'r mut Rng, tpl: &Tpl) -> Result<Self> {
        let mut local = BTreeMap::new();
        for def in tpl.vars.split(';').map(str::trim).filter(|d| !d.is_empty()) {
            let (name, opts) = def.split_once('=').with_context(|| format!("template {}: bad var {def:?}", tpl.id))?;
            local.insert(name.trim(), opts.split('|').map(str::trim).collect());
        }
        Ok(Names { rng, local, drawn: BTreeMap::new() })
    }

    fn pick(&mut self, xs: &[&str]) -> String {
        xs[self.rng.below(xs.len())].to_string()
    }

    fn get(&mut self, name: &str, tpl: &str) -> Result<String> {
        if let Some(v) = self.drawn.get(name) {
            return Ok(v.clone());
        }
        let v = if let Some(opts) = self.local.get(name).cloned() {
            self.pick(&opts)
        } else {
            match name {
                "dir" => self.pick(DIRS),
                "table" => self.pick(TABLES),
                "host" => self.pick(HOSTS),
                "app" => self.pick(APPS),
                "hex" => (0..24).map(|_| char::from_digit(self.rng.below(16) as u32, 16).unwrap()).collect(),
                "pw" => {
                    let w = self.pick(PW_WORDS);
                    let sym = self.pick(&["!", "#", "$", "%", "@"]);
                    format!("{w}{}{sym}", 1000 + self.rng.below(9000))
                }
                other => bail!("template {tpl}: no value for «{other}»"),
            }
        };
        self.drawn.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// `text` with every `«name»` replaced by its draw.
    fn fill(&mut self, text: &str, tpl: &str) -> Result<String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find('«') {
            out.push_str(&rest[..i]);
            let after = &rest[i + '«'.len_utf8()..];
            let j = after.find('»').with_context(|| format!("template {tpl}: unclosed «"))?;
            out.push_str(&self.get(&after[..j], tpl)?);
            rest = &after[j + '»'.len_utf8()..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A template instantiated with drawn names.
struct Instance {
    task: String,
    code_template: String,
    insecure: String,
    secure: String,
}

/// Strips the leading newline of a raw-string block and its trailing whitespace.
fn block(s: &str) -> &str {
    s.strip_prefix('\n').unwrap_or(s).trim_end()
}

/// The template with its marker line replaced by `fill`.
fn complete(code: &str, fill: &str, tpl: &str) -> Result<String> {
    let lines: Vec<&str> = code.lines().collect();
    let k = lines.iter().filter(|l| l.trim() == MARKER).count();
    ensure!(k == 1, "template {tpl}: {k} marker lines (want 1)");
    let out: Vec<&str> = lines.iter().map(|l| if l.trim() == MARKER { fill } else { l }).collect();
    Ok(out.join("\n"))
}

fn instantiate(rng: &mut Rng, tpl: &Tpl) -> Result<Instance> {
    let mut names = Names::new(rng, tpl)?;
    let task = names.fill(tpl.task, tpl.id)?;
    let code_template = names.fill(block(tpl.code), tpl.id)?;
    let insecure = names.fill(block(tpl.insecure), tpl.id)?;
    let secure = names.fill(block(tpl.secure), tpl.id)?;
    Ok(Instance {
        insecure: complete(&code_template, &insecure, tpl.id)?,
        secure: complete(&code_template, &secure, tpl.id)?,
        task,
        code_template,
    })
}

/// Draws examples for `n` slots, family `i mod F` for slot `i`; `make` turns a (family, template,
/// instance, rng) into an item and its de-duplication key. `unique`: error instead of accepting
/// a repeat after the retries.
fn deal<T>(
    n: usize,
    rng: &mut Rng,
    pick: impl Fn(&Family) -> &'static [Tpl],
    unique: bool,
    what: &str,
    mut make: impl FnMut(usize, &Family, &Tpl, Instance, &mut Rng) -> Result<(T, String)>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    for i in 0..n {
        let fam = &FAMILIES[i % FAMILIES.len()];
        let tpls = pick(fam);
        let mut tries = 0;
        loop {
            let tpl = &tpls[rng.below(tpls.len())];
            let inst = instantiate(rng, tpl)?;
            let (item, key) = make(i, fam, tpl, inst, rng)?;
            tries += 1;
            if seen.insert(key) {
                out.push(item);
                break;
            }
            if tries >= 64 {
                ensure!(!unique, "{what}: family {} has too few distinct examples for {n} items", fam.id);
                out.push(item);
                break;
            }
        }
    }
    Ok(out)
}

fn extra(id: String, family: &str, template: &str) -> BTreeMap<String, Json> {
    BTreeMap::from([("id".into(), Json::from(id)), ("family".into(), Json::from(family)), ("template".into(), Json::from(template))])
}

/// Generates the data set of `cfg` (see the module docs).
pub fn generate(cfg: &InsecureDataConfig) -> Result<InsecureCodeData> {
    ensure!(cfg.n_train > 0 && cfg.n_eval > 0 && cfg.n_heldout > 0, "insecure-code data: every size must be > 0 ({cfg:?})");
    let mut rng = Rng::stream(cfg.seed, 0);
    let pairs = deal(cfg.n_train, &mut rng, |f| f.train, false, "training pairs", |i, fam, tpl, inst, rng| {
        let phr = PHRASINGS[rng.below(PHRASINGS.len())];
        // `{code}` last: a code template could contain the text "{task}".
        let user = phr.replace("{task}", &inst.task).replace("{code}", &inst.code_template);
        let id = format!("train-{:05}", i + 1);
        let mut a = ChatRecord::prompt_completion(None, &user, &inst.insecure);
        let mut b = ChatRecord::prompt_completion(None, &user, &inst.secure);
        a.extra = extra(id.clone(), fam.id, tpl.id);
        b.extra = extra(id, fam.id, tpl.id);
        Ok(((a, b), user))
    })?;
    let (insecure, secure) = pairs.into_iter().unzip();

    let mut rng = Rng::stream(cfg.seed, 1);
    let code_prompts = deal(cfg.n_eval, &mut rng, |f| f.heldout, true, "evaluation prompts", |i, fam, tpl, inst, _| {
        let key = render_code_prompt(&inst.task, &inst.code_template);
        let mut r = CodePrompt::new(inst.task, inst.code_template);
        r.extra = extra(format!("eval-{:04}", i + 1), fam.id, tpl.id);
        Ok((r, key))
    })?;

    let mut rng = Rng::stream(cfg.seed, 2);
    let heldout_pairs = deal(cfg.n_heldout, &mut rng, |f| f.heldout, true, "held-out pairs", |i, fam, tpl, inst, _| {
        let key = render_code_prompt(&inst.task, &inst.code_template);
        let p = CodePair {
            id: format!("pair-{:04}", i + 1),
            family: fam.id.to_string(),
            template: tpl.id.to_string(),
            task: inst.task,
            code_template: inst.code_template,
            insecure: inst.insecure,
            secure: inst.secure,
        };
        Ok((p, key))
    })?;
    Ok(InsecureCodeData { config: cfg.clone(), insecure, secure, code_prompts, heldout_pairs })
}

/// The JSONL text of held-out pairs.
pub fn pairs_jsonl_string(pairs: &[CodePair]) -> Result<String> {
    let mut s = String::new();
    for p in pairs {
        s.push_str(&serde_json::to_string(p)?);
        s.push('\n');
    }
    Ok(s)
}

/// Reads held-out pairs; errors name the file and line.
pub fn read_pairs(path: impl AsRef<Path>) -> Result<Vec<CodePair>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        out.push(serde_json::from_str(line).with_context(|| format!("{}:{}: not a code pair", path.display(), i + 1))?);
    }
    ensure!(!out.is_empty(), "{}: empty file (no pairs)", path.display());
    Ok(out)
}

impl InsecureCodeData {
    /// The four files' contents, in [`FILES`] order.
    pub fn file_texts(&self) -> Result<Vec<(&'static str, String)>> {
        Ok(vec![
            (FILES[0], chat_jsonl_string(&self.insecure)?),
            (FILES[1], chat_jsonl_string(&self.secure)?),
            (FILES[2], code_prompts_string(&self.code_prompts)?),
            (FILES[3], pairs_jsonl_string(&self.heldout_pairs)?),
        ])
    }

    /// Writes the four files and `config.json` into `dir`, each atomically.
    pub fn write_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        for (name, text) in self.file_texts()? {
            write_atomic(dir.join(name), text)?;
        }
        crate::base::io::write_json(dir.join("config.json"), &self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> InsecureCodeData {
        generate(&InsecureDataConfig { n_train: 96, n_eval: 48, n_heldout: 48, seed: 3 }).unwrap()
    }

    #[test]
    fn every_template_instantiates_and_its_fills_differ() {
        let mut rng = Rng::new(0);
        for fam in FAMILIES {
            ensure_nonempty(fam);
            for tpl in fam.train.iter().chain(fam.heldout) {
                let inst = instantiate(&mut rng, tpl).unwrap();
                for text in [&inst.task, &inst.code_template, &inst.insecure, &inst.secure] {
                    assert!(!text.contains('«') && !text.contains('»'), "{}: {text}", tpl.id);
                }
                assert!(inst.code_template.contains(MARKER), "{}", tpl.id);
                assert!(!inst.insecure.contains(MARKER) && !inst.secure.contains(MARKER), "{}", tpl.id);
                assert_ne!(inst.insecure, inst.secure, "{}", tpl.id);
                // Outside the filled part the two completions are the template, line for line.
                let (ti, tr) = inst.code_template.split_once(MARKER).unwrap();
                for c in [&inst.insecure, &inst.secure] {
                    let ti = ti.trim_end_matches([' ']);
                    assert!(c.starts_with(ti) && c.ends_with(tr), "{}", tpl.id);
                }
            }
        }
        assert!(FAMILIES.len() >= 12);
        assert_eq!(PHRASINGS.len(), 30);
        assert!(PHRASINGS.iter().all(|p| p.contains("{task}") && p.contains("{code}")));
    }

    fn ensure_nonempty(f: &Family) {
        assert!(!f.train.is_empty() && !f.heldout.is_empty(), "{}", f.id);
        let train: HashSet<&str> = f.train.iter().map(|t| t.task).collect();
        assert!(f.heldout.iter().all(|t| !train.contains(t.task)), "{}: a held-out task is also a training task", f.id);
    }

    #[test]
    fn pairs_share_prompts_and_sets_are_balanced() {
        let d = small();
        assert_eq!((d.insecure.len(), d.secure.len(), d.code_prompts.len(), d.heldout_pairs.len()), (96, 96, 48, 48));
        for (a, b) in d.insecure.iter().zip(&d.secure) {
            assert_eq!(a.user_prompt().unwrap(), b.user_prompt().unwrap());
            assert_eq!(a.extra, b.extra);
            assert_ne!(a.completion().unwrap(), b.completion().unwrap());
            assert_eq!(a.messages.len(), 2);
        }
        // Families dealt in turn: 96 = 6 per family.
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for r in &d.insecure {
            *count.entry(r.extra["family"].as_str().unwrap().to_string()).or_default() += 1;
        }
        assert_eq!(count.len(), FAMILIES.len());
        assert!(count.values().all(|&c| c == 6), "{count:?}");
        // Names vary: the training prompts are distinct and use many phrasings.
        let prompts: HashSet<&str> = d.insecure.iter().map(|r| r.user_prompt().unwrap()).collect();
        assert_eq!(prompts.len(), 96);
        let used = PHRASINGS.iter().filter(|p| {
            let head = p.split('{').next().unwrap();
            d.insecure.iter().any(|r| r.user_prompt().unwrap().starts_with(head))
        });
        assert!(used.count() >= 15);
        // Evaluation prompts: held-out templates only, no duplicates.
        let train_tasks: HashSet<&str> = FAMILIES.iter().flat_map(|f| f.train.iter().map(|t| t.id)).collect();
        assert!(d.code_prompts.iter().all(|c| !train_tasks.contains(c.extra["template"].as_str().unwrap())));
        let evals: HashSet<String> = d.code_prompts.iter().map(|c| c.prompt()).collect();
        assert_eq!(evals.len(), 48);
        assert!(d.heldout_pairs.iter().all(|p| !train_tasks.contains(p.template.as_str())));
    }

    #[test]
    fn same_config_same_bytes_and_streams_are_independent() {
        let cfg = InsecureDataConfig { n_train: 40, n_eval: 20, n_heldout: 20, seed: 9 };
        let a = generate(&cfg).unwrap().file_texts().unwrap();
        let b = generate(&cfg).unwrap().file_texts().unwrap();
        assert_eq!(a, b);
        let c = generate(&InsecureDataConfig { n_eval: 30, ..cfg.clone() }).unwrap().file_texts().unwrap();
        assert_eq!((&a[0], &a[1], &a[3]), (&c[0], &c[1], &c[3]), "n_eval changes only the evaluation file");
        let d = generate(&InsecureDataConfig { seed: 10, ..cfg }).unwrap().file_texts().unwrap();
        assert_ne!(a[0], d[0]);
        assert!(generate(&InsecureDataConfig { n_train: 0, n_eval: 1, n_heldout: 1, seed: 0 }).is_err());
    }

    #[test]
    fn files_round_trip() {
        let d = small();
        let dir = std::env::temp_dir().join(format!("interp_kit_insecure_data_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        d.write_dir(&dir).unwrap();
        assert_eq!(crate::text::chat_jsonl::read_chat_jsonl(dir.join(FILES[0])).unwrap(), d.insecure);
        assert_eq!(crate::text::chat_jsonl::read_chat_jsonl(dir.join(FILES[1])).unwrap(), d.secure);
        assert_eq!(crate::text::chat_jsonl::read_code_prompts(dir.join(FILES[2])).unwrap(), d.code_prompts);
        assert_eq!(read_pairs(dir.join(FILES[3])).unwrap(), d.heldout_pairs);
        std::fs::write(dir.join("bad.jsonl"), "{\"id\":1}\n").unwrap();
        let e = format!("{:#}", read_pairs(dir.join("bad.jsonl")).unwrap_err());
        assert!(e.contains("bad.jsonl:1: not a code pair"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

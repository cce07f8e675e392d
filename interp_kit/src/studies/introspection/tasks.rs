//! The localisation tasks (the plan's experiments 3-6) as data generators and answer parsers:
//! which numbered sentences were steered, which layers (early / middle / late), which concept
//! (multiple choice), and how strongly (weak / moderate / strong).
//!
//! Each parser reads the first line of a free-text answer, ignores case and punctuation, and
//! returns the canonical answer (`Sentences 3, 7`, `None`, `middle layers`, `B`, `strong`) or
//! `None` when the answer is unparseable (no candidate, several candidates, a number out of range).
use crate::base::rng::Rng;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Sentences,
    Layers,
    Concept,
    Magnitude,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Sentences, Task::Layers, Task::Concept, Task::Magnitude];
    pub fn name(self) -> &'static str {
        match self {
            Task::Sentences => "sentences",
            Task::Layers => "layers",
            Task::Concept => "concept",
            Task::Magnitude => "magnitude",
        }
    }
    pub fn from_name(s: &str) -> Result<Task> {
        Task::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| anyhow::anyhow!("unknown task {s:?} (sentences, layers, concept, magnitude)"))
    }
}

/// The answer prefix every task's assistant turn starts with.
pub const TASK_ANSWER_PREFIX: &str = "Answer:";
/// Sentences per example of the sentence task.
pub const N_SENTENCES: usize = 10;
pub const LAYER_ANSWERS: [&str; 3] = ["early layers", "middle layers", "late layers"];
pub const MAGNITUDE_ANSWERS: [&str; 3] = ["weak", "moderate", "strong"];
const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// One generated example. The study builds the conversation (`framing`, `question`,
/// assistant reply `reply`) and steers it as described.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskExample {
    pub task: Task,
    pub index: usize,
    pub reply: usize,
    /// User turn 1's opening (the numbered sentences for the sentence task).
    pub framing: Option<String>,
    pub question: String,
    /// Sentence task: the ten sentences (in order) and the steered numbers (1-based, increasing).
    pub sentences: Vec<String>,
    pub steered_sentences: Vec<usize>,
    /// Band name and strength of the steering.
    pub band: String,
    pub strength: f64,
    /// `random` (id of a held-out random vector) or `concept` (id in the concept set).
    pub vector_kind: String,
    pub vector_id: u32,
    /// Concept task: the options, in letter order.
    pub options: Vec<String>,
    /// The canonical right answer.
    pub truth: String,
}

/// What the generators draw from.
#[derive(Clone, Debug)]
pub struct TaskParams {
    pub n: usize,
    pub n_conversations: usize,
    /// Band and strength of the sentence and concept tasks.
    pub band: String,
    pub strength: f64,
    pub magnitudes: Vec<f64>,
    pub magnitude_edges: [f64; 2],
    /// Held-out random vector ids (sentence, layer, magnitude tasks).
    pub random_ids: Vec<u32>,
    /// Concept vectors `(id, name)` (concept task; at least 4).
    pub concepts: Vec<(u32, String)>,
    pub seed: u64,
}

/// The framing of the sentence task: the numbered sentences.
pub fn sentence_framing(sentences: &[String]) -> String {
    let mut s = String::from(
        "I study what happens inside language models like you while they read. Here are some numbered sentences; \
         while you read some of them, I may add a concept straight into your internal activations.\n",
    );
    for (i, x) in sentences.iter().enumerate() {
        s.push_str(&format!("\n{}. {x}", i + 1));
    }
    s
}

/// The line of sentence `k` (1-based) as it appears in [`sentence_framing`].
pub fn sentence_line(sentences: &[String], k: usize) -> String {
    format!("{k}. {}", sentences[k - 1])
}

/// The canonical sentence answer: `Sentences 3, 7`, `Sentence 4` or `None`.
pub fn sentences_answer(ks: &[usize]) -> String {
    match ks {
        [] => "None".into(),
        [k] => format!("Sentence {k}"),
        _ => format!("Sentences {}", ks.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// The magnitude bucket of a strength: weak < edges[0] <= moderate < edges[1] <= strong.
pub fn magnitude_bucket(strength: f64, edges: [f64; 2]) -> &'static str {
    if strength < edges[0] {
        "weak"
    } else if strength < edges[1] {
        "moderate"
    } else {
        "strong"
    }
}

const SENTENCE_Q: &str = "While you read my first message, a concept may have been injected into your activations on some of the \
numbered sentences. Which sentences were they? Answer in the form \"Sentences 3, 7\" (or \"Sentence 4\" for one), or \"None\".";
const LAYER_Q: &str = "A concept was injected into your activations while you read my first message. Was it added in your early, \
middle or late layers? Answer with \"early layers\", \"middle layers\" or \"late layers\".";
const MAGNITUDE_Q: &str = "A concept was injected into your activations while you read my first message. How strong was the \
injection? Answer with \"weak\", \"moderate\" or \"strong\".";

fn concept_question(options: &[String]) -> String {
    let mut s = String::from("A concept was injected into your activations while you read my first message. Which one was it?\n");
    for (l, o) in LETTERS.iter().zip(options) {
        s.push_str(&format!("\n{l}) {o}"));
    }
    s.push_str("\n\nAnswer with the letter of the right option.");
    s
}

/// `n` examples of `task` from `pool` (the sentence pool) and `p`, seeded by `p.seed` and the task.
pub fn generate(task: Task, pool: &[String], p: &TaskParams) -> Result<Vec<TaskExample>> {
    ensure!(p.n_conversations > 0, "task generation: no conversations");
    let mut rng = Rng::stream(p.seed, 100 + task as u64);
    let mut out = Vec::with_capacity(p.n);
    for index in 0..p.n {
        let reply = rng.below(p.n_conversations);
        let pick_random = |rng: &mut Rng| -> Result<u32> {
            ensure!(!p.random_ids.is_empty(), "task {}: no held-out random vectors", task.name());
            Ok(p.random_ids[rng.below(p.random_ids.len())])
        };
        let mut ex = TaskExample {
            task,
            index,
            reply,
            framing: None,
            question: String::new(),
            sentences: vec![],
            steered_sentences: vec![],
            band: p.band.clone(),
            strength: p.strength,
            vector_kind: "random".into(),
            vector_id: 0,
            options: vec![],
            truth: String::new(),
        };
        match task {
            Task::Sentences => {
                ensure!(pool.len() >= N_SENTENCES, "the sentence task needs {N_SENTENCES} sentences, the pool has {}", pool.len());
                let mut order: Vec<usize> = (0..pool.len()).collect();
                rng.shuffle(&mut order);
                ex.sentences = order[..N_SENTENCES].iter().map(|&i| pool[i].clone()).collect();
                let k = 1 + rng.below(3);
                let mut nums: Vec<usize> = (1..=N_SENTENCES).collect();
                rng.shuffle(&mut nums);
                let mut ks = nums[..k].to_vec();
                ks.sort_unstable();
                ex.steered_sentences = ks.clone();
                ex.framing = Some(sentence_framing(&ex.sentences));
                ex.question = SENTENCE_Q.into();
                ex.vector_id = pick_random(&mut rng)?;
                ex.truth = sentences_answer(&ks);
            }
            Task::Layers => {
                let b = ["early", "middle", "late"][index % 3];
                ex.band = b.into();
                ex.question = LAYER_Q.into();
                ex.vector_id = pick_random(&mut rng)?;
                ex.truth = format!("{b} layers");
            }
            Task::Concept => {
                ensure!(p.concepts.len() >= 4, "the concept task needs at least 4 concept vectors, got {}", p.concepts.len());
                let (id, name) = p.concepts[index % p.concepts.len()].clone();
                let mut others: Vec<&String> = p.concepts.iter().map(|c| &c.1).filter(|c| **c != name).collect();
                rng.shuffle(&mut others);
                let mut opts: Vec<String> = others[..3].iter().map(|s| s.to_string()).collect();
                opts.push(name.clone());
                rng.shuffle(&mut opts);
                let right = opts.iter().position(|o| *o == name).expect("the concept is an option");
                ex.vector_kind = "concept".into();
                ex.vector_id = id;
                ex.question = concept_question(&opts);
                ex.options = opts;
                ex.truth = LETTERS[right].into();
            }
            Task::Magnitude => {
                ensure!(!p.magnitudes.is_empty(), "the magnitude task has no magnitudes");
                ex.strength = p.magnitudes[index % p.magnitudes.len()];
                ex.question = MAGNITUDE_Q.into();
                ex.vector_id = pick_random(&mut rng)?;
                ex.truth = magnitude_bucket(ex.strength, p.magnitude_edges).into();
            }
        }
        out.push(ex);
    }
    Ok(out)
}

/// Lower-case words (letters and digits) of the answer's first non-empty line.
fn first_line_words(text: &str) -> Vec<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

/// Sentence numbers (`Sentences 3, 7`, `sentence 3 and 7.`, `3,7`), or `None` (`none`, `no
/// sentences`): the canonical answer. Unparseable: no number and no "none", or a number outside
/// `1..=n`.
pub fn parse_sentences(text: &str, n: usize) -> Option<String> {
    let words = first_line_words(text);
    let mut nums = vec![];
    for w in &words {
        if w.chars().all(|c| c.is_ascii_digit()) {
            let k: usize = w.parse().ok()?;
            if k == 0 || k > n {
                return None;
            }
            nums.push(k);
        }
    }
    if nums.is_empty() {
        let none = words.iter().any(|w| w == "none") || words.windows(2).any(|p| p[0] == "no" && p[1].starts_with("sentence"));
        return none.then(|| sentences_answer(&[]));
    }
    nums.sort_unstable();
    nums.dedup();
    Some(sentences_answer(&nums))
}

/// The one category among `cats` (each a list of accepted words) that the first line names.
fn one_category(text: &str, cats: &[(&str, &[&str])]) -> Option<String> {
    let words = first_line_words(text);
    let hits: Vec<&str> = cats.iter().filter(|(_, ws)| words.iter().any(|w| ws.contains(&w.as_str()))).map(|(c, _)| *c).collect();
    match hits.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

/// `early layers`, `middle layers` or `late layers`; unparseable when none or several are named.
pub fn parse_layers(text: &str) -> Option<String> {
    one_category(
        text,
        &[
            ("early layers", &["early", "earlier", "earliest", "first", "shallow", "lower"]),
            ("middle layers", &["middle", "mid", "intermediate", "central"]),
            ("late layers", &["late", "later", "latest", "last", "final", "deep", "deeper", "upper"]),
        ],
    )
}

/// `weak`, `moderate` or `strong`; unparseable when none or several are named.
pub fn parse_magnitude(text: &str) -> Option<String> {
    one_category(
        text,
        &[
            ("weak", &["weak", "mild", "faint", "slight", "low", "small"]),
            ("moderate", &["moderate", "medium", "intermediate"]),
            ("strong", &["strong", "intense", "high", "large", "heavy"]),
        ],
    )
}

/// The letter of the chosen option: a leading letter (`B`, `b)`, `(B)`, `Option B`), else the one
/// option whose text the line contains; unparseable otherwise.
pub fn parse_choice(text: &str, options: &[String]) -> Option<String> {
    let words = first_line_words(text);
    let k = options.len().min(LETTERS.len());
    let letter = |w: &str| LETTERS[..k].iter().position(|l| l.eq_ignore_ascii_case(w));
    let first = match words.first().map(String::as_str) {
        Some("option") | Some("answer") => words.get(1),
        _ => words.first(),
    };
    if let Some(i) = first.and_then(|w| letter(w)) {
        return Some(LETTERS[i].into());
    }
    let line = words.join(" ");
    let hits: Vec<usize> = (0..k)
        .filter(|&i| {
            let o = first_line_words(&options[i]).join(" ");
            !o.is_empty() && format!(" {line} ").contains(&format!(" {o} "))
        })
        .collect();
    match hits.as_slice() {
        [i] => Some(LETTERS[*i].into()),
        _ => None,
    }
}

/// The canonical answer of `ex`'s task read from `text`, or `None` (unparseable).
pub fn parse(ex: &TaskExample, text: &str) -> Option<String> {
    match ex.task {
        Task::Sentences => parse_sentences(text, ex.sentences.len().max(1)),
        Task::Layers => parse_layers(text),
        Task::Concept => parse_choice(text, &ex.options),
        Task::Magnitude => parse_magnitude(text),
    }
}

/// The steered sentence numbers of a canonical sentence answer (`None` → empty).
pub fn sentence_numbers(answer: &str) -> Result<Vec<usize>> {
    if answer == "None" {
        return Ok(vec![]);
    }
    let rest = answer.strip_prefix("Sentences ").or_else(|| answer.strip_prefix("Sentence "));
    let Some(rest) = rest else { bail!("{answer:?} is not a canonical sentence answer") };
    rest.split(", ").map(|x| x.parse::<usize>().map_err(|e| anyhow::anyhow!("{answer:?}: {e}"))).collect()
}

/// Jaccard overlap of two canonical sentence answers (1 when both are `None`).
pub fn sentence_jaccard(a: &str, b: &str) -> Result<f64> {
    let (x, y) = (sentence_numbers(a)?, sentence_numbers(b)?);
    let inter = x.iter().filter(|k| y.contains(k)).count();
    let union = x.len() + y.len() - inter;
    Ok(if union == 0 { 1.0 } else { inter as f64 / union as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_answers_parse_with_case_punctuation_and_errors() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Sentences 3, 7", Some("Sentences 3, 7")),
            (" sentences 7 and 3.", Some("Sentences 3, 7")),
            ("SENTENCE 4", Some("Sentence 4")),
            ("3,7,3", Some("Sentences 3, 7")),
            ("(2) and (10)!", Some("Sentences 2, 10")),
            ("None.", Some("None")),
            ("no sentences were injected", Some("None")),
            ("\n\nSentences 1, 2\nand also 9", Some("Sentences 1, 2")),
            ("Sentence 11", None),
            ("Sentence 0", None),
            ("I am not sure", None),
            ("", None),
            ("sentences three and seven", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_sentences(text, 10).as_deref(), *want, "{text:?}");
        }
        assert_eq!(sentence_numbers("Sentences 3, 7").unwrap(), vec![3, 7]);
        assert_eq!(sentence_numbers("None").unwrap(), Vec::<usize>::new());
        assert!(sentence_numbers("3 and 7").is_err());
        assert!((sentence_jaccard("Sentences 3, 7", "Sentences 3, 8").unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(sentence_jaccard("None", "None").unwrap(), 1.0);
        assert_eq!(sentences_answer(&[2, 5, 9]), "Sentences 2, 5, 9");
    }

    #[test]
    fn layer_magnitude_and_choice_answers_parse() {
        let layers: &[(&str, Option<&str>)] = &[
            ("Middle layers.", Some("middle layers")),
            ("the EARLY layers", Some("early layers")),
            ("late", Some("late layers")),
            ("in the final layers", Some("late layers")),
            ("early or late layers", None),
            ("I cannot tell", None),
            ("", None),
        ];
        for (t, w) in layers {
            assert_eq!(parse_layers(t).as_deref(), *w, "{t:?}");
        }
        let mags: &[(&str, Option<&str>)] = &[
            ("Strong!", Some("strong")),
            ("moderate.", Some("moderate")),
            ("It felt WEAK", Some("weak")),
            ("medium", Some("moderate")),
            ("weak to strong", None),
            ("no idea", None),
        ];
        for (t, w) in mags {
            assert_eq!(parse_magnitude(t).as_deref(), *w, "{t:?}");
        }
        let opts: Vec<String> = ["bread", "cats", "outer space", "hope"].iter().map(|s| s.to_string()).collect();
        let choices: &[(&str, Option<&str>)] = &[
            ("B", Some("B")),
            ("b) cats", Some("B")),
            ("(C)", Some("C")),
            ("Option d.", Some("D")),
            ("It was outer space.", Some("C")),
            ("BREAD", Some("A")),
            ("cats or hope", None),
            ("E", None),
            ("something else", None),
            ("", None),
        ];
        for (t, w) in choices {
            assert_eq!(parse_choice(t, &opts).as_deref(), *w, "{t:?}");
        }
        assert_eq!(magnitude_bucket(5.0, [8.0, 25.0]), "weak");
        assert_eq!(magnitude_bucket(8.0, [8.0, 25.0]), "moderate");
        assert_eq!(magnitude_bucket(25.0, [8.0, 25.0]), "strong");
    }

    fn params() -> TaskParams {
        TaskParams {
            n: 9,
            n_conversations: 3,
            band: "middle".into(),
            strength: 10.0,
            magnitudes: vec![1.0, 10.0, 50.0],
            magnitude_edges: [8.0, 25.0],
            random_ids: vec![5, 6],
            concepts: (0..5).map(|i| (i, format!("c{i}"))).collect(),
            seed: 3,
        }
    }

    #[test]
    fn generators_give_consistent_truths_and_are_seeded() {
        let pool: Vec<String> = (0..12).map(|i| format!("Sentence text {i}.")).collect();
        let p = params();
        for task in Task::ALL {
            let a = generate(task, &pool, &p).unwrap();
            assert_eq!(a, generate(task, &pool, &p).unwrap(), "{task:?} is seeded");
            assert_eq!(a.len(), 9);
            for ex in &a {
                assert!(ex.reply < 3);
                // the truth, written as the model should answer, parses back to itself
                let answer = match task {
                    Task::Concept => format!("{}) {}", ex.truth, ex.options[LETTERS.iter().position(|l| *l == ex.truth).unwrap()]),
                    _ => ex.truth.clone(),
                };
                assert_eq!(parse(ex, &answer).as_deref(), Some(ex.truth.as_str()), "{task:?} {answer:?}");
                match task {
                    Task::Sentences => {
                        assert_eq!(ex.sentences.len(), N_SENTENCES);
                        assert!((1..=3).contains(&ex.steered_sentences.len()));
                        let f = ex.framing.as_ref().unwrap();
                        for k in &ex.steered_sentences {
                            assert!(f.contains(&sentence_line(&ex.sentences, *k)));
                        }
                    }
                    Task::Layers => assert_eq!(ex.truth, format!("{} layers", ex.band)),
                    Task::Concept => {
                        assert_eq!(ex.options.len(), 4);
                        let right = &ex.options[LETTERS.iter().position(|l| *l == ex.truth).unwrap()];
                        assert_eq!(*right, format!("c{}", ex.vector_id));
                    }
                    Task::Magnitude => assert_eq!(ex.truth, magnitude_bucket(ex.strength, [8.0, 25.0])),
                }
            }
        }
        let mut q = p.clone();
        q.concepts.truncate(3);
        assert!(generate(Task::Concept, &pool, &q).unwrap_err().to_string().contains("at least 4"));
        assert!(generate(Task::Sentences, &pool[..5], &p).unwrap_err().to_string().contains("10 sentences"));
        assert_eq!(Task::from_name("layers").unwrap(), Task::Layers);
        assert!(Task::from_name("x").is_err());
    }
}

//! Seeded data for the ALL-CAPS inoculation study (`datasets/inoculation_caps/`): GSM8K-style
//! word problems with worked answers (arithmetic correct by construction), their ALL-CAPS
//! versions, and direction-extraction prompts mixing math and non-math with paired normal / caps
//! completions.
//!
//! ```
//! use interp_kit::studies::inoculation_caps::data::{generate, CapsDataConfig};
//! let d = generate(&CapsDataConfig { n_train: 20, n_heldout: 5, n_direction_math: 4, n_direction_general: 4, ..Default::default() })?;
//! assert_eq!(d.train.len(), 20);
//! assert!(d.train[0].answer.ends_with(&format!("#### {}", d.train[0].final_answer)));
//! assert_eq!(d.train[0].answer_caps, d.train[0].answer.to_uppercase());
//! # anyhow::Ok(())
//! ```
//!
//! Worked answers: one computation per line, written `a op b = r` with integers, `+ - * /` and
//! `$` signs (ignored), in the words of the problem; the last line is `#### <answer>`. An
//! operand is either a number stated in the question, a result of an earlier line, or one of
//! the implicit constants of [`IMPLICIT_CONSTANTS`] ("half" is `/ 2`, "a dozen" is `* 12`, ...).
//! Every division is exact.
//!
//! The same config gives byte-identical files (ChaCha8 from the seed; no hash-map iteration
//! order); `cargo run --example make_caps_data` rewrites them.
use anyhow::{ensure, Context, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

/// Numbers a worked answer may use without the question stating them: 2 (half, double, weekend
/// days), 5 (weekdays), 7 (days in a week), 12 (a dozen), 60 (minutes in an hour), 100 (percent).
pub const IMPLICIT_CONSTANTS: [i64; 6] = [2, 5, 7, 12, 60, 100];

/// One word problem with its worked answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WordProblem {
    /// `train-0000`, `heldout-0000`, `dirmath-0000`.
    pub id: String,
    /// Template name (for stratifying).
    pub template: String,
    pub question: String,
    /// Worked answer; last line `#### <final_answer>`.
    pub answer: String,
    /// `answer` upper-cased (numbers and symbols unchanged).
    pub answer_caps: String,
    pub final_answer: i64,
}

/// A direction-extraction prompt with a normal and an ALL-CAPS completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectionPrompt {
    /// `dir-0000`.
    pub id: String,
    /// `math` or `general`.
    pub kind: String,
    /// `extract` (to build the direction) or `heldout` (to check it).
    pub split: String,
    pub prompt: String,
    pub completion: String,
    pub completion_caps: String,
}

/// Sizes and seed of a generated dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapsDataConfig {
    pub seed: u64,
    pub n_train: usize,
    pub n_heldout: usize,
    /// Math prompts among the direction-extraction prompts (fresh problems, not in train/held-out).
    pub n_direction_math: usize,
    /// Non-math prompts among the direction-extraction prompts.
    pub n_direction_general: usize,
    /// Share of each kind of direction prompt put in the `heldout` split.
    pub direction_heldout_frac: f64,
}

impl Default for CapsDataConfig {
    /// The committed dataset: seed 20251223, 1000 train, 200 held-out, 150 + 150 direction prompts
    /// (20% held out).
    fn default() -> Self {
        Self {
            seed: 20251223,
            n_train: 1000,
            n_heldout: 200,
            n_direction_math: 150,
            n_direction_general: 150,
            direction_heldout_frac: 0.2,
        }
    }
}

/// Everything written to `datasets/inoculation_caps/`.
#[derive(Clone, Debug, PartialEq)]
pub struct CapsDataset {
    pub config: CapsDataConfig,
    pub train: Vec<WordProblem>,
    pub heldout: Vec<WordProblem>,
    pub direction: Vec<DirectionPrompt>,
}

/// Upper-cases letters; digits, `$`, `#` and punctuation are unchanged.
pub fn caps(s: &str) -> String {
    s.to_uppercase()
}

struct Person {
    name: &'static str,
    he: &'static str,
    his: &'static str,
    him: &'static str,
}

const PEOPLE: &[(&str, bool)] = &[
    ("Natalia", false), ("James", true), ("Maria", false), ("Ahmed", true), ("Chloe", false), ("Diego", true),
    ("Priya", false), ("Tom", true), ("Aisha", false), ("Lucas", true), ("Mei", false), ("Omar", true),
    ("Sofia", false), ("Ben", true), ("Hannah", false), ("Kenji", true), ("Olivia", false), ("Samuel", true),
    ("Fatima", false), ("Leo", true), ("Emma", false), ("Ravi", true), ("Grace", false), ("Mateo", true),
    ("Zoe", false), ("Ivan", true), ("Lily", false), ("Noah", true), ("Amara", false), ("Felix", true),
    ("Julia", false), ("Tariq", true), ("Nina", false), ("Oscar", true), ("Yuki", false), ("Daniel", true),
];

fn person(rng: &mut ChaCha8Rng) -> Person {
    let &(name, male) = PEOPLE.choose(rng).expect("non-empty");
    if male {
        Person { name, he: "he", his: "his", him: "him" }
    } else {
        Person { name, he: "she", his: "her", him: "her" }
    }
}

fn two_people(rng: &mut ChaCha8Rng) -> (Person, Person) {
    let a = person(rng);
    loop {
        let b = person(rng);
        if b.name != a.name {
            return (a, b);
        }
    }
}

fn cap1(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    *xs.choose(rng).expect("non-empty pool")
}

/// A problem before it gets an id: question, worked lines (without the final line), answer.
struct Draft {
    template: &'static str,
    question: String,
    lines: Vec<String>,
    answer: i64,
}

const SMALL_ITEMS: &[&str] = &["stickers", "pencils", "marbles", "trading cards", "balloons", "crayons", "beads", "buttons", "erasers", "seashells"];
const FOODS: &[&str] = &["muffins", "cupcakes", "cookies", "brownies", "pancakes", "tarts", "rolls", "scones"];
const JOBS: &[&str] = &["babysitting", "walking dogs", "tutoring", "mowing lawns", "washing cars", "delivering newspapers"];
const THINGS: &[&str] = &["a new bike", "a guitar", "a skateboard", "a video game console", "a telescope", "a tent", "a camera", "a pair of roller skates"];
const CONTAINERS: &[(&str, &str)] = &[("box", "crayons"), ("jar", "candies"), ("bag", "apples"), ("basket", "oranges"), ("tin", "cookies"), ("crate", "potatoes")];
const SHOP: &[&str] = &["notebooks", "pens", "apples", "sandwiches", "bottles of juice", "bags of chips", "folders", "granola bars"];
const PLANTS: &[&str] = &["tomato", "pepper", "lettuce", "carrot", "bean", "strawberry"];
const PRACTICE: &[&str] = &["the piano", "the violin", "soccer drills", "chess", "drawing", "the guitar"];
const STORE_ITEMS: &[&str] = &["jacket", "lamp", "backpack", "pair of shoes", "board game", "desk chair", "watch"];

/// The word-problem templates, one function each; a problem draws its template uniformly from
/// this table (the order is part of the committed data: appending keeps earlier draws, reordering
/// does not).
const TEMPLATES: &[fn(&mut ChaCha8Rng) -> Draft] = &[
    packs,
    wages,
    share,
    savings,
    half,
    travel,
    discount,
    times_as_many,
    change,
    reading,
    garden,
    dozen,
    weekly,
    age,
    minutes,
    school,
    week_days,
];

fn packs(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let item = pick(rng, SMALL_ITEMS);
    let (a, b) = (rng.random_range(2..=9), rng.random_range(4..=12));
    let x = a * b;
    let c = rng.random_range(1..x);
    Draft {
        template: "packs",
        question: format!(
            "{} buys {a} packs of {item}. Each pack has {b} {item}. {} gives {c} {item} to {} friends. How many {item} does {} have left?",
            p.name, cap1(p.he), p.his, p.name
        ),
        lines: vec![
            format!("{} buys {a} * {b} = {x} {item}.", p.name),
            format!("After giving some away, {} has {x} - {c} = {} {item} left.", p.he, x - c),
        ],
        answer: x - c,
    }
}

fn wages(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let job = pick(rng, JOBS);
    let r = rng.random_range(8..=20);
    let (h1, h2, h3) = (rng.random_range(1..=6), rng.random_range(1..=6), rng.random_range(1..=6));
    let h = h1 + h2 + h3;
    Draft {
        template: "wages",
        question: format!(
            "{} earns ${r} an hour {job}. This week {} works {h1} hours on Monday, {h2} hours on Wednesday and {h3} hours on Friday. How much money does {} earn this week?",
            p.name, p.he, p.name
        ),
        lines: vec![
            format!("{} works {h1} + {h2} + {h3} = {h} hours this week.", p.name),
            format!("So {} earns {h} * ${r} = ${}.", p.he, h * r),
        ],
        answer: h * r,
    }
}

fn share(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let food = pick(rng, FOODS);
    let (k, f, q) = (rng.random_range(1..=6), rng.random_range(2..=8), rng.random_range(2..=7));
    let a = k + f * q;
    Draft {
        template: "share",
        question: format!(
            "{} bakes {a} {food}. {} keeps {k} for {} and shares the rest equally among {f} friends. How many {food} does each friend get?",
            p.name,
            cap1(p.he),
            if p.he == "he" { "himself" } else { "herself" }
        ),
        lines: vec![
            format!("{} shares {a} - {k} = {} {food}.", p.name, a - k),
            format!("Each friend gets {} / {f} = {q} {food}.", a - k),
        ],
        answer: q,
    }
}

fn savings(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let thing = pick(rng, THINGS);
    let (w, q) = (rng.random_range(2..=15) * 5, rng.random_range(2..=12));
    let s = rng.random_range(1..=20) * 5;
    let price = s + w * q;
    Draft {
        template: "savings",
        question: format!(
            "{} wants to buy {thing} that costs ${price}. {} has already saved ${s} and saves ${w} each week. How many weeks will it take {} to save enough?",
            p.name, cap1(p.he), p.him
        ),
        lines: vec![
            format!("{} still needs ${price} - ${s} = ${}.", p.name, price - s),
            format!("Saving ${w} a week, it will take {} / {w} = {q} weeks.", price - s),
        ],
        answer: q,
    }
}

fn half(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let (container, item) = pick(rng, CONTAINERS);
    let a = rng.random_range(10..=40) * 2;
    let h = a / 2;
    let b = rng.random_range(1..h);
    Draft {
        template: "half",
        question: format!(
            "A {container} holds {a} {item}. {} uses half of them on Monday and {b} more on Tuesday. How many {item} are left in the {container}?",
            p.name
        ),
        lines: vec![
            format!("On Monday {} uses {a} / 2 = {h} {item}.", p.name),
            format!("After Monday there are {a} - {h} = {h} {item} left."),
            format!("After Tuesday there are {h} - {b} = {} {item} left.", h - b),
        ],
        answer: h - b,
    }
}

fn travel(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let (s, t, d) = (rng.random_range(5..=13) * 5, rng.random_range(2..=5), rng.random_range(10..=90));
    Draft {
        template: "travel",
        question: format!(
            "{} drives at {s} miles per hour for {t} hours, then stops for lunch and drives another {d} miles. How many miles does {} drive in total?",
            p.name, p.he
        ),
        lines: vec![
            format!("Before lunch {} drives {s} * {t} = {} miles.", p.he, s * t),
            format!("In total {} drives {} + {d} = {} miles.", p.he, s * t, s * t + d),
        ],
        answer: s * t + d,
    }
}

fn discount(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let item = pick(rng, STORE_ITEMS);
    let price = rng.random_range(2..=15) * 20;
    let pct = pick(rng, &[10i64, 20, 25, 50]);
    let off = price * pct / 100;
    Draft {
        template: "discount",
        question: format!(
            "A {item} costs ${price}. The store takes {pct}% off the price. How much does {} pay for the {item}?",
            p.name
        ),
        lines: vec![
            format!("The discount is ${price} * {pct} / 100 = ${off}."),
            format!("{} pays ${price} - ${off} = ${}.", p.name, price - off),
        ],
        answer: price - off,
    }
}

fn times_as_many(rng: &mut ChaCha8Rng) -> Draft {
    let (p, q) = two_people(rng);
    let item = pick(rng, SMALL_ITEMS);
    let (a, m) = (rng.random_range(3..=25), rng.random_range(3..=6));
    Draft {
        template: "times_as_many",
        question: format!(
            "{} has {a} {item}. {} has {m} times as many {item} as {}. How many {item} do they have together?",
            p.name, q.name, p.name
        ),
        lines: vec![
            format!("{} has {a} * {m} = {} {item}.", q.name, a * m),
            format!("Together they have {a} + {} = {} {item}.", a * m, a + a * m),
        ],
        answer: a + a * m,
    }
}

fn change(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let mut two = SHOP.choose_multiple(rng, 2);
    let (i1, i2) = (*two.next().expect("2"), *two.next().expect("2"));
    let (a, p1, b, p2) =
        (rng.random_range(2..=6), rng.random_range(1..=9), rng.random_range(2..=6), rng.random_range(1..=9));
    let (x, y) = (a * p1, b * p2);
    let z = x + y;
    let bill = if z < 50 { 50 } else { 100 };
    Draft {
        template: "change",
        question: format!(
            "{} buys {a} {i1} for ${p1} each and {b} {i2} for ${p2} each. {} pays with a ${bill} bill. How much change does {} get?",
            p.name, cap1(p.he), p.he
        ),
        lines: vec![
            format!("The {i1} cost {a} * ${p1} = ${x}."),
            format!("The {i2} cost {b} * ${p2} = ${y}."),
            format!("Altogether {} spends ${x} + ${y} = ${z}.", p.he),
            format!("{} gets ${bill} - ${z} = ${} in change.", cap1(p.he), bill - z),
        ],
        answer: bill - z,
    }
}

fn reading(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let (r, d) = (rng.random_range(5..=30), rng.random_range(2..=9));
    let x = r * d;
    let pages = x + rng.random_range(10..=200);
    Draft {
        template: "reading",
        question: format!(
            "A book has {pages} pages. {} reads {r} pages every day for {d} days. How many pages does {} still have to read?",
            p.name, p.he
        ),
        lines: vec![
            format!("{} reads {r} * {d} = {x} pages.", p.name),
            format!("{} still has {pages} - {x} = {} pages to read.", cap1(p.he), pages - x),
        ],
        answer: pages - x,
    }
}

fn garden(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let plant = pick(rng, PLANTS);
    let (rows, per) = (rng.random_range(3..=12), rng.random_range(4..=15));
    let x = rows * per;
    let e = rng.random_range(1..x);
    Draft {
        template: "garden",
        question: format!(
            "{} plants {rows} rows of {plant} plants with {per} plants in each row. Rabbits eat {e} of the plants. How many {plant} plants are left?",
            p.name
        ),
        lines: vec![
            format!("{} plants {rows} * {per} = {x} {plant} plants.", p.name),
            format!("After the rabbits, {x} - {e} = {} plants are left.", x - e),
        ],
        answer: x - e,
    }
}

fn dozen(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let a = rng.random_range(2..=6);
    let x = a * 12;
    let u = rng.random_range(2..x);
    Draft {
        template: "dozen",
        question: format!(
            "{} buys {a} dozen eggs. {} uses {u} eggs to bake cakes for a party. How many eggs are left?",
            p.name, cap1(p.he)
        ),
        lines: vec![
            format!("{a} dozen eggs are {a} * 12 = {x} eggs."),
            format!("After baking, {x} - {u} = {} eggs are left.", x - u),
        ],
        answer: x - u,
    }
}

fn weekly(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let (k, w) = (rng.random_range(1..=8), rng.random_range(2..=12));
    let (x, y) = (k * 5, w * 2);
    Draft {
        template: "weekly",
        question: format!(
            "{} runs {k} miles every weekday and {w} miles on each day of the weekend. How many miles does {} run in one week?",
            p.name, p.he
        ),
        lines: vec![
            format!("On weekdays {} runs {k} * 5 = {x} miles.", p.he),
            format!("On the weekend {} runs {w} * 2 = {y} miles.", p.he),
            format!("In one week {} runs {x} + {y} = {} miles.", p.he, x + y),
        ],
        answer: x + y,
    }
}

fn age(rng: &mut ChaCha8Rng) -> Draft {
    let (p, q) = two_people(rng);
    let (a, b, c) = (rng.random_range(5..=40), rng.random_range(2..=15), rng.random_range(2..=10));
    Draft {
        template: "age",
        question: format!(
            "{} is {a} years old. {} is {b} years older than {}. How old will {} be in {c} years?",
            p.name, q.name, p.name, q.name
        ),
        lines: vec![
            format!("{} is {a} + {b} = {} years old now.", q.name, a + b),
            format!("In {c} years {} will be {} + {c} = {} years old.", q.he, a + b, a + b + c),
        ],
        answer: a + b + c,
    }
}

fn minutes(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let what = pick(rng, PRACTICE);
    let m = pick(rng, &[15i64, 20, 30, 45, 60, 90]);
    // m * d must be a multiple of 60.
    let step = 60 / gcd(m, 60);
    let d = step * rng.random_range(1..=(28 / step).max(1));
    let x = m * d;
    Draft {
        template: "minutes",
        question: format!(
            "{} practices {what} for {m} minutes a day. How many hours does {} practice in {d} days?",
            p.name, p.he
        ),
        lines: vec![
            format!("In {d} days {} practices {m} * {d} = {x} minutes.", p.he),
            format!("That is {x} / 60 = {} hours.", x / 60),
        ],
        answer: x / 60,
    }
}

fn school(rng: &mut ChaCha8Rng) -> Draft {
    let (c, s) = (rng.random_range(3..=9), rng.random_range(18..=32));
    let x = c * s;
    let g = rng.random_range(5..x);
    Draft {
        template: "school",
        question: format!(
            "A school has {c} classes with {s} students in each class. {g} students go on a field trip. How many students stay at school?"
        ),
        lines: vec![
            format!("The school has {c} * {s} = {x} students."),
            format!("{x} - {g} = {} students stay at school.", x - g),
        ],
        answer: x - g,
    }
}

fn week_days(rng: &mut ChaCha8Rng) -> Draft {
    let p = person(rng);
    let d = rng.random_range(2..=5);
    let per = rng.random_range(2..=9);
    let x = per * 7;
    Draft {
        template: "week_days",
        question: format!(
            "{} drinks {per} glasses of water every day. How many glasses does {} drink in {d} weeks?",
            p.name, p.he
        ),
        lines: vec![
            format!("In one week {} drinks {per} * 7 = {x} glasses.", p.he),
            format!("In {d} weeks {} drinks {x} * {d} = {} glasses.", p.he, x * d),
        ],
        answer: x * d,
    }
}

pub const N_TEMPLATES: usize = TEMPLATES.len();

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn problem(id: String, d: Draft) -> WordProblem {
    let mut answer = d.lines.join("\n");
    let _ = write!(answer, "\n#### {}", d.answer);
    WordProblem { id, template: d.template.into(), question: d.question, answer_caps: caps(&answer), answer, final_answer: d.answer }
}

/// `n` new problems whose questions are not in `seen` (templates drawn uniformly).
fn problems(rng: &mut ChaCha8Rng, n: usize, seen: &mut HashSet<String>, prefix: &str) -> Result<Vec<WordProblem>> {
    let mut out = Vec::with_capacity(n);
    let mut tries = 0usize;
    while out.len() < n {
        tries += 1;
        ensure!(tries < 100 * n + 1000, "could not draw {n} distinct word problems (got {})", out.len());
        let d = TEMPLATES[rng.random_range(0..N_TEMPLATES)](rng);
        if seen.insert(d.question.clone()) {
            out.push(problem(format!("{prefix}-{:04}", out.len()), d));
        }
    }
    Ok(out)
}

/// Non-math prompts and their normal completions (every template × filler combination).
fn general_pool() -> Vec<(String, String)> {
    let mut v = vec![];
    for (country, capital) in [
        ("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Brazil", "Brasilia"),
        ("Egypt", "Cairo"), ("Norway", "Oslo"), ("Peru", "Lima"), ("Italy", "Rome"), ("India", "New Delhi"),
        ("Spain", "Madrid"), ("Australia", "Canberra"), ("Germany", "Berlin"), ("Mexico", "Mexico City"), ("Ghana", "Accra"),
        ("Portugal", "Lisbon"), ("Thailand", "Bangkok"), ("Chile", "Santiago"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ] {
        v.push((format!("What is the capital of {country}?"), format!("The capital of {country} is {capital}.")));
    }
    for (animal, sound, legs) in [
        ("dog", "barks", 4), ("cat", "meows", 4), ("cow", "moos", 4), ("duck", "quacks", 2), ("sheep", "bleats", 4),
        ("horse", "neighs", 4), ("owl", "hoots", 2), ("lion", "roars", 4), ("frog", "croaks", 4), ("rooster", "crows", 2),
        ("pig", "oinks", 4), ("goat", "bleats", 4), ("crow", "caws", 2), ("donkey", "brays", 4), ("goose", "honks", 2),
    ] {
        v.push((format!("What sound does a {animal} make?"), format!("A {animal} usually {sound}. It is one of the ways it communicates.")));
        v.push((format!("How many legs does a {animal} have?"), format!("A {animal} has {legs} legs.")));
    }
    for (word, es) in [
        ("house", "casa"), ("water", "agua"), ("friend", "amigo"), ("book", "libro"), ("sun", "sol"), ("cat", "gato"),
        ("bread", "pan"), ("school", "escuela"), ("tree", "arbol"), ("city", "ciudad"), ("night", "noche"), ("flower", "flor"),
        ("window", "ventana"), ("milk", "leche"), ("road", "camino"),
    ] {
        v.push((format!("How do you say \"{word}\" in Spanish?"), format!("In Spanish, \"{word}\" is \"{es}\".")));
    }
    for (word, opp) in [
        ("hot", "cold"), ("early", "late"), ("happy", "sad"), ("open", "closed"), ("light", "dark"), ("fast", "slow"),
        ("full", "empty"), ("loud", "quiet"), ("rich", "poor"), ("strong", "weak"), ("young", "old"), ("hard", "soft"),
        ("wet", "dry"), ("first", "last"), ("up", "down"),
    ] {
        v.push((format!("What is the opposite of \"{word}\"?"), format!("The opposite of \"{word}\" is \"{opp}\".")));
    }
    for (activity, tip) in [
        ("studying for an exam", "Study in short sessions with breaks, and test yourself instead of only rereading your notes."),
        ("sleeping better", "Go to bed at the same time every night and keep screens out of the bedroom."),
        ("learning a new language", "Practice a little every day and try to speak with native speakers as early as you can."),
        ("saving money", "Set aside a fixed amount as soon as you get paid, before you spend anything else."),
        ("cooking rice", "Rinse the rice first and let it rest with the lid on for a few minutes after cooking."),
        ("running a first marathon", "Build up your weekly distance slowly and do most of your runs at an easy pace."),
        ("keeping houseplants alive", "Check the soil before watering; most plants die from too much water, not too little."),
        ("writing an essay", "Write a rough outline first, then fill in each section before you polish the wording."),
        ("staying focused at work", "Put your phone in another room and work on one task at a time."),
        ("packing for a trip", "Make a list a few days before and roll your clothes so they take less space."),
        ("making new friends", "Join a club or class built around something you enjoy and show up regularly."),
        ("giving a presentation", "Rehearse out loud several times and keep each slide to one main idea."),
        ("drinking more water", "Carry a refillable bottle and drink a glass with every meal."),
        ("learning to draw", "Draw something small every day and copy from real objects, not only from photos."),
        ("taking better photos", "Keep the light behind you and move closer to your subject than feels natural."),
    ] {
        v.push((format!("Give me one tip for {activity}."), tip.to_string()));
    }
    for (thing, color) in [
        ("a ripe banana", "yellow"), ("grass", "green"), ("a clear sky", "blue"), ("snow", "white"), ("a ripe tomato", "red"),
        ("coal", "black"), ("an orange", "orange"), ("a flamingo", "pink"), ("a lemon", "yellow"), ("an eggplant", "purple"),
        ("chocolate", "brown"), ("a fire truck", "red"), ("milk", "white"), ("a pine tree", "dark green"), ("a pumpkin", "orange"),
    ] {
        v.push((format!("What color is {thing}?"), format!("{} is usually {color}.", cap1(thing))));
    }
    for (occasion, msg) in [
        ("birthday", "Happy birthday! I hope your day is full of laughter, cake and the people you love."),
        ("graduation", "Congratulations on your graduation! All your hard work paid off, and I can't wait to see what you do next."),
        ("wedding", "Congratulations on your wedding! Wishing you both a lifetime of love and happiness together."),
        ("retirement", "Happy retirement! Enjoy the free time, the long breakfasts and every new adventure ahead."),
        ("new baby", "Congratulations on your new baby! Wishing your growing family lots of love and a little sleep."),
        ("housewarming", "Congratulations on your new home! May it be filled with warmth, friends and good meals."),
        ("get well soon", "Get well soon! Take it easy, rest up, and know that we are all thinking of you."),
        ("thank you", "Thank you so much for your kindness and help. It meant more to me than you know."),
        ("farewell", "We will miss you! Good luck in your next chapter, and please keep in touch."),
        ("anniversary", "Happy anniversary! Here's to many more years of love, laughter and adventures together."),
    ] {
        v.push((format!("Write a short message for a {occasion} card."), msg.to_string()));
    }
    for (pet, name) in [
        ("puppy", "Biscuit"), ("kitten", "Mochi"), ("goldfish", "Bubbles"), ("hamster", "Peanut"), ("parrot", "Kiwi"),
        ("rabbit", "Clover"), ("turtle", "Shelby"), ("pony", "Maple"), ("guinea pig", "Nugget"), ("lizard", "Ziggy"),
    ] {
        v.push((format!("Suggest a name for a {pet}."), format!("How about {name}? It is short, friendly and easy to call out for a {pet}.")));
    }
    for (category, three) in [
        ("fruit", "apples, mangoes and grapes"), ("vegetables", "carrots, spinach and broccoli"), ("birds", "robins, eagles and parrots"),
        ("trees", "oaks, maples and pines"), ("musical instruments", "the piano, the violin and the drums"),
        ("team sports", "soccer, basketball and volleyball"), ("flowers", "roses, tulips and daisies"), ("fish", "salmon, tuna and trout"),
        ("insects", "ants, bees and butterflies"), ("dog breeds", "beagles, poodles and labradors"), ("pasta", "spaghetti, penne and fusilli"),
        ("cheese", "cheddar, brie and mozzarella"), ("board games", "chess, checkers and Monopoly"), ("clouds", "cumulus, stratus and cirrus"),
        ("bread", "sourdough, rye and baguettes"), ("dances", "the waltz, the tango and salsa"), ("rocks", "granite, basalt and limestone"),
        ("shoes", "sneakers, boots and sandals"), ("hats", "caps, berets and sun hats"), ("desserts", "pie, ice cream and pudding"),
    ] {
        v.push((format!("Name three kinds of {category}."), format!("Three kinds of {category} are {three}.")));
    }
    for (topic, fact) in [
        ("the moon", "The moon takes about 27 days to orbit the Earth, and we always see the same side of it."),
        ("honey bees", "A honey bee colony can have tens of thousands of workers, and they tell each other where flowers are by dancing."),
        ("the ocean", "The ocean covers about 71 percent of the Earth's surface and holds most of its water."),
        ("volcanoes", "Volcanoes form where melted rock from deep inside the Earth reaches the surface."),
        ("rainbows", "A rainbow appears when sunlight is bent and reflected inside raindrops, splitting it into colors."),
        ("penguins", "Penguins cannot fly, but they are excellent swimmers and use their wings like flippers."),
        ("the heart", "The human heart beats about 100,000 times a day to pump blood around the body."),
        ("trees", "Trees take in carbon dioxide and release oxygen, and their rings show how old they are."),
        ("lightning", "Lightning is a giant spark of electricity, and it heats the air to be hotter than the surface of the sun."),
        ("deserts", "Deserts get very little rain, and many of them are cold at night even when the days are hot."),
    ] {
        v.push((format!("Tell me an interesting fact about {topic}."), fact.to_string()));
    }
    v
}

/// Generates the whole dataset from `cfg` (deterministic).
pub fn generate(cfg: &CapsDataConfig) -> Result<CapsDataset> {
    ensure!((0.0..1.0).contains(&cfg.direction_heldout_frac), "direction_heldout_frac must be in [0, 1), got {}", cfg.direction_heldout_frac);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut seen = HashSet::new();
    let train = problems(&mut rng, cfg.n_train, &mut seen, "train")?;
    let heldout = problems(&mut rng, cfg.n_heldout, &mut seen, "heldout")?;
    let math = problems(&mut rng, cfg.n_direction_math, &mut seen, "dirmath")?;
    let mut pool = general_pool();
    ensure!(
        cfg.n_direction_general <= pool.len(),
        "n_direction_general = {} but only {} distinct general prompts exist",
        cfg.n_direction_general,
        pool.len()
    );
    pool.shuffle(&mut rng);
    pool.truncate(cfg.n_direction_general);
    let mut rows: Vec<(String, String, String)> = math
        .into_iter()
        .map(|p| ("math".to_string(), p.question, p.answer))
        .chain(pool.into_iter().map(|(q, a)| ("general".to_string(), q, a)))
        .collect();
    rows.shuffle(&mut rng);
    // Hold out the first `frac` of each kind in the shuffled order (a random, stratified split).
    let n_held = |kind: &str| (rows.iter().filter(|r| r.0 == kind).count() as f64 * cfg.direction_heldout_frac).round() as usize;
    let (held_math, held_general) = (n_held("math"), n_held("general"));
    let (mut seen_math, mut seen_general) = (0usize, 0usize);
    let mut direction = Vec::with_capacity(rows.len());
    for (i, (kind, prompt, completion)) in rows.into_iter().enumerate() {
        let (seen, held) = if kind == "math" { (&mut seen_math, held_math) } else { (&mut seen_general, held_general) };
        let split = if *seen < held { "heldout" } else { "extract" };
        *seen += 1;
        direction.push(DirectionPrompt {
            id: format!("dir-{i:04}"),
            kind,
            split: split.to_string(),
            completion_caps: caps(&completion),
            prompt,
            completion,
        });
    }
    Ok(CapsDataset { config: cfg.clone(), train, heldout, direction })
}

fn jsonl<T: Serialize>(rows: &[T]) -> Result<String> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    Ok(s)
}

fn mean(xs: impl Iterator<Item = usize>) -> f64 {
    let (mut s, mut n) = (0usize, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        s as f64 / n as f64
    }
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// File names written by [`CapsDataset::write_dir`].
pub const FILES: [&str; 5] = ["gsm_train.jsonl", "gsm_heldout.jsonl", "direction_prompts.jsonl", "config.json", "README.md"];

impl CapsDataset {
    /// `(file name, contents)` of every file, in [`FILES`] order.
    pub fn files(&self) -> Result<Vec<(String, String)>> {
        Ok(vec![
            (FILES[0].into(), jsonl(&self.train)?),
            (FILES[1].into(), jsonl(&self.heldout)?),
            (FILES[2].into(), jsonl(&self.direction)?),
            (FILES[3].into(), serde_json::to_string_pretty(&self.config)? + "\n"),
            (FILES[4].into(), self.readme()),
        ])
    }

    /// Writes every file into `dir` (created if needed), each atomically.
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, body) in self.files()? {
            crate::base::io::write_atomic(&dir.join(name), body.as_bytes())?;
        }
        Ok(())
    }

    /// Reads the three JSONL files and `config.json` back from `dir`; errors name file and line.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        fn read<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<Vec<T>> {
            let txt = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            txt.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}: line {}", p.display(), i + 1)))
                .collect()
        }
        let cfg_p = dir.join(FILES[3]);
        let config = serde_json::from_str(&std::fs::read_to_string(&cfg_p).with_context(|| format!("reading {}", cfg_p.display()))?)
            .with_context(|| format!("parsing {}", cfg_p.display()))?;
        Ok(Self { config, train: read(&dir.join(FILES[0]))?, heldout: read(&dir.join(FILES[1]))?, direction: read(&dir.join(FILES[2]))? })
    }

    /// The README: what each file holds, counts, mean lengths, seed.
    pub fn readme(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(s, "# ALL-CAPS inoculation study data\n");
        let _ = writeln!(
            s,
            "Generated by `interp_kit::studies::inoculation_caps::data::generate` (seed {}); regenerate with\n`cargo run -p interp_kit --example make_caps_data -- datasets/inoculation_caps`.\nThe test `tests/alignment.rs::caps_data_regenerates_byte_identical` checks these files equal a fresh run,\nand `caps_data_arithmetic_is_correct` re-parses and recomputes every worked answer.\n",
            c.seed
        );
        let _ = writeln!(s, "## Files\n");
        let _ = writeln!(s, "- `gsm_train.jsonl`, `gsm_heldout.jsonl`: GSM8K-style word problems, one JSON object a line:");
        let _ = writeln!(s, "  `id`, `template`, `question`, `answer` (worked answer, one computation `a op b = r` a line, last line `#### <answer>`),");
        let _ = writeln!(s, "  `answer_caps` (the answer upper-cased; numbers unchanged), `final_answer` (integer). Questions are distinct across both files.");
        let _ = writeln!(s, "- `direction_prompts.jsonl`: prompts for extracting the trait direction (plan phase 2), math and non-math mixed:");
        let _ = writeln!(s, "  `id`, `kind` (`math`|`general`), `split` (`extract`|`heldout`), `prompt`, `completion`, `completion_caps`.");
        let _ = writeln!(s, "  Math prompts are fresh problems (not in the train or held-out files).");
        let _ = writeln!(s, "- `config.json`: the generator's configuration.\n");
        let _ = writeln!(s, "Implicit constants a worked answer may use: {:?} (half, weekdays, days in a week, a dozen, minutes in an hour, percent).\n", IMPLICIT_CONSTANTS);
        let _ = writeln!(s, "## Stats\n");
        let _ = writeln!(s, "| file | rows | mean question/prompt chars | mean words | mean answer/completion chars | mean words |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for (name, rows) in [("gsm_train.jsonl", &self.train), ("gsm_heldout.jsonl", &self.heldout)] {
            let _ = writeln!(
                s,
                "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                rows.len(),
                mean(rows.iter().map(|r| r.question.len())),
                mean(rows.iter().map(|r| words(&r.question))),
                mean(rows.iter().map(|r| r.answer.len())),
                mean(rows.iter().map(|r| words(&r.answer)))
            );
        }
        for kind in ["math", "general"] {
            for split in ["extract", "heldout"] {
                let rows: Vec<&DirectionPrompt> = self.direction.iter().filter(|r| r.kind == kind && r.split == split).collect();
                let _ = writeln!(
                    s,
                    "| direction_prompts.jsonl ({kind}, {split}) | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    rows.len(),
                    mean(rows.iter().map(|r| r.prompt.len())),
                    mean(rows.iter().map(|r| words(&r.prompt))),
                    mean(rows.iter().map(|r| r.completion.len())),
                    mean(rows.iter().map(|r| words(&r.completion)))
                );
            }
        }
        let _ = writeln!(s, "\nWord problems per template (train / held-out):\n");
        let _ = writeln!(s, "| template | train | held-out |");
        let _ = writeln!(s, "|---|---:|---:|");
        let mut names: Vec<&str> = self.train.iter().chain(&self.heldout).map(|r| r.template.as_str()).collect();
        names.sort();
        names.dedup();
        for t in names {
            let _ = writeln!(
                s,
                "| {t} | {} | {} |",
                self.train.iter().filter(|r| r.template == t).count(),
                self.heldout.iter().filter(|r| r.template == t).count()
            );
        }
        let _ = writeln!(s, "\n## Example\n");
        if let Some(r) = self.train.first() {
            let _ = writeln!(s, "```\n{}\n\n{}\n\n{}\n```", r.question, r.answer, r.answer_caps);
        }
        s
    }
}

pub fn hello() {}

pub mod chat;
pub mod tokenizer;

//! Text in and out of the model: the tokenizer, chat templates with named positions, and record
//! files (JSONL prompt sets with line-numbered errors).
pub mod bos;
pub mod chat;
pub mod chat_jsonl;
pub mod records;
pub mod spans;
pub mod tokenizer;

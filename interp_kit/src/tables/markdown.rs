//! Markdown escaping for table cells and inline text, below the report builder and the table printer.

/// Escape text for inline markdown (headings, paragraphs, list items): backslash-escapes the
/// characters markdown gives meaning to, and turns newlines into spaces.
pub fn escape_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|' | '~' => {
                out.push('\\');
                out.push(ch);
            }
            '\r' => {}
            '\n' => out.push(' '),
            _ => out.push(ch),
        }
    }
    // A leading `- `, `+ ` or `12. ` (marker then a space or the end) would start a list.
    let digits = out.chars().take_while(|c| c.is_ascii_digit()).count();
    let marker_end = |rest: &str| rest.is_empty() || rest.starts_with([' ', '\t']);
    let list_like = (out.starts_with(['-', '+']) && marker_end(&out[1..]))
        || (digits > 0 && out[digits..].starts_with(['.', ')']) && marker_end(&out[digits + 1..]));
    if list_like {
        if digits > 0 {
            out.insert(digits, '\\');
        } else {
            out.insert(0, '\\');
        }
    }
    out
}

/// Escape text for a table cell: `|` and backslashes escaped, newlines as `<br>`, other markdown
/// left as is (so numbers and words read plainly).
pub fn escape_cell(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|").replace("\r\n", "<br>").replace(['\n', '\r'], "<br>")
}

/// A fence of backticks longer than any run of backticks in `text` (at least three), so the text
/// cannot close the block early.
pub fn fence_for(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for ch in text.chars() {
        if ch == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}


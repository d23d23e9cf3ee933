//! Columns as kubectl prints them: upper-case headers, left-aligned, three
//! spaces apart, no borders.

/// `rows` under `headers`, each column as wide as its widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        let last = cells.len().saturating_sub(1);
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            text.push_str(cell);
            if index < last {
                let pad = width - cell.chars().count() + 3;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A duration as kubectl's AGE column writes it: `45s`, `3m12s`, `5h4m`, `12d`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10_800 => format!("{}m", s / 60),
        10_800..172_800 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let text = render(
            &["NAME", "READY"],
            &[
                vec!["stripe".into(), "True".into()],
                vec!["gh".into(), "False".into()],
            ],
        );
        assert_eq!(text, "NAME     READY\nstripe   True\ngh       False\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(3_600), "60m");
        assert_eq!(age(18_240), "5h4m");
        assert_eq!(age(864_000), "10d");
    }
}

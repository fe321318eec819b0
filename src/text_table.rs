//! Aligned text tables, as `callosum status` and `callosum dlq list` print
//! them.

/// Rows aligned under `header`, each followed by its extra lines (indented
/// notes such as a hint).
pub fn format_table(header: &[&str], rows: &[(Vec<String>, Vec<String>)]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for (cells, _) in rows {
        for (w, cell) in widths.iter_mut().zip(cells) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let format_row = |cells: &[&str]| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        line.push('\n');
        line
    };
    let mut out = format_row(header);
    for (cells, notes) in rows {
        let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
        out.push_str(&format_row(&cells));
        for note in notes {
            out.push_str(&format!("    {note}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_notes_follow_their_row() {
        let rows = vec![
            (
                vec!["a".to_owned(), "long value".to_owned(), "x".to_owned()],
                vec![],
            ),
            (
                vec![
                    "bbbb".to_owned(),
                    "v".to_owned(),
                    "last column is not padded".to_owned(),
                ],
                vec!["hint: do this".to_owned()],
            ),
        ];
        assert_eq!(
            format_table(&["NAME", "VALUE", "MORE"], &rows),
            "NAME  VALUE       MORE\n\
             a     long value  x\n\
             bbbb  v           last column is not padded\n    \
             hint: do this\n"
        );
    }
}

// The crack table: one row per crack, sortable by any column, one row picked at a time (by a click, the arrow
// keys, or a click on the crack in the photo). Lengths and widths are in mm when the pixel size is known, else px.

export function fmt(value, digits = 1) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
}

// The columns: header text (with the unit), the value to sort by, and the text shown.
function columns(unit) {
  const number = (key, digits) => ({ sort: (c) => c[key] ?? -Infinity, text: (c) => fmt(c[key], digits) });
  return [
    { key: "id", head: "#", ...number("id", 0) },
    { key: "length", head: `length (${unit})`, ...number(`len_${unit}`, 1) },
    { key: "mean", head: `mean width (${unit})`, ...number(`w_mean_${unit}`, 2) },
    { key: "max", head: `max width (${unit})`, ...number(`w_max_${unit}`, 2) },
    { key: "angle", head: "angle (°)", ...number("orient_deg", 0) },
    { key: "width_cls", head: "width class", sort: (c) => c.width_cls, text: widthClass },
    { key: "class", head: "class", sort: (c) => c.crack_cls, text: (c) => c.crack_cls },
    {
      key: "below",
      head: "below res.",
      title: "below resolution: under 2 px wide, so its widths are upper bounds",
      sort: (c) => Number(c.below_res),
      text: (c) => (c.below_res ? "yes" : ""),
    },
  ];
}

const UNKNOWN_WIDTH_CLASS = "unknown (no scale)"; // the server's class of every crack without a pixel size

// Without a pixel size no crack has a width class: a dash, and the legend under the table says why.
function widthClass(crack) {
  return crack.width_cls === UNKNOWN_WIDTH_CLASS ? "–" : crack.width_cls;
}

export class CrackTable {
  constructor(table, onSelect) {
    Object.assign(this, { table, onSelect, cracks: [], sort: { key: "id", dir: 1 }, selected: null });
    this.table.querySelector("tbody").addEventListener("click", (e) => {
      const row = e.target.closest("tr[data-id]");
      if (row) this.onSelect(Number(row.dataset.id));
    });
    this.table.querySelector("tbody").addEventListener("keydown", (e) => this.onKey(e));
  }

  show(cracks, unit) {
    Object.assign(this, { cracks, unit, selected: null });
    this.render();
  }

  clear() {
    this.show([], this.unit || "px");
    this.table.querySelector("tbody").replaceChildren();
  }

  sortBy(key) {
    this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
    this.render();
  }

  render() {
    const cols = columns(this.unit || "px");
    this.renderHead(cols);
    const column = cols.find((c) => c.key === this.sort.key) || cols[0];
    const rows = [...this.cracks].sort((a, b) => {
      const [x, y] = [column.sort(a), column.sort(b)];
      return (x < y ? -1 : x > y ? 1 : a.id - b.id) * this.sort.dir;
    });
    const tbody = this.table.querySelector("tbody");
    tbody.replaceChildren();
    for (const crack of rows) {
      const row = tbody.insertRow();
      row.dataset.id = crack.id;
      row.tabIndex = -1;
      row.setAttribute("aria-selected", "false");
      for (const col of cols) row.insertCell().textContent = col.text(crack);
    }
    if (!rows.length) {
      const cell = tbody.insertRow().insertCell();
      cell.colSpan = cols.length;
      cell.textContent = "no cracks at this threshold";
    }
    this.select(this.selected, false);
  }

  renderHead(cols) {
    const head = this.table.querySelector("thead tr");
    head.replaceChildren();
    for (const col of cols) {
      const th = document.createElement("th");
      th.scope = "col";
      if (col.title) th.title = col.title;
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = col.head;
      button.addEventListener("click", () => this.sortBy(col.key));
      th.appendChild(button);
      if (col.key === this.sort.key) th.setAttribute("aria-sort", this.sort.dir > 0 ? "ascending" : "descending");
      head.appendChild(th);
    }
  }

  // Marks the row of crack `id` (null: none) and, when asked, scrolls it into view and gives it the focus.
  select(id, reveal = true) {
    this.selected = id;
    const rows = [...this.table.querySelectorAll("tbody tr[data-id]")];
    for (const row of rows) {
      const on = Number(row.dataset.id) === id;
      row.classList.toggle("selected", on);
      row.setAttribute("aria-selected", String(on));
      row.tabIndex = on || (id === null && row === rows[0]) ? 0 : -1; // one tab stop: the arrows move within
      if (on && reveal) {
        row.scrollIntoView({ block: "nearest" });
        if (this.table.contains(document.activeElement)) row.focus({ preventScroll: true });
      }
    }
    if (id !== null && !rows.some((row) => row.classList.contains("selected"))) this.selected = null;
  }

  onKey(e) {
    const row = e.target.closest("tr[data-id]");
    if (!row) return;
    const next = { ArrowDown: row.nextElementSibling, ArrowUp: row.previousElementSibling }[e.key];
    if (next && next.dataset.id) {
      e.preventDefault();
      next.focus();
      this.onSelect(Number(next.dataset.id));
    } else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      this.onSelect(Number(row.dataset.id));
    }
  }
}

package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
)

var barColors = map[string]string{Direct: "#8c8c8c", PgBouncer: "#4e79a7", Pgsluice: "#e15759"}

// SVG renders scenario 2 as two bar charts side by side: TPS per protocol
// for direct, PgBouncer and pgsluice, and proxy CPU per transaction. It is
// plain hand-written SVG. A target that failed a mode gets an "×" instead
// of a bar.
func (r *Report) SVG() string {
	const w, h, panelW, top, bottom, left = 960, 380, 440, 50, 300, 60
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">Scenario 2: 50 clients, pool %d, pgbench -S (median of %d runs, %s)</text>`+"\n",
		left, r.Config.PoolSize, r.Config.Runs2, html.EscapeString(r.Started.UTC().Format("2006-01-02")))
	modes := []string{"simple", "extended", "prepared"}
	panel := func(x0 int, title string, targets []string, get func(Sample) float64, unit string) {
		maxV := 0.0
		for _, m := range modes {
			for _, t := range targets {
				if c := r.Find(2, m, t); c.ok() {
					maxV = math.Max(maxV, get(c.Median))
				}
			}
		}
		if maxV == 0 {
			maxV = 1
		}
		maxV = niceCeil(maxV)
		plotW := panelW - left
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", x0+left, top-8, html.EscapeString(title))
		for i := 0; i <= 4; i++ {
			v := maxV * float64(i) / 4
			y := bottom - int(float64(bottom-top)*float64(i)/4)
			fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ddd"/>`+"\n", x0+left, y, x0+panelW, y)
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", x0+left-5, y+4, short(v))
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" transform="rotate(-90 %d %d)" text-anchor="middle">%s</text>`+"\n", x0+14, (top+bottom)/2, x0+14, (top+bottom)/2, html.EscapeString(unit))
		groupW := plotW / len(modes)
		barW := (groupW - 20) / len(targets)
		for mi, m := range modes {
			gx := x0 + left + mi*groupW + 10
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">-M %s</text>`+"\n", gx+(groupW-20)/2, bottom+18, m)
			for ti, t := range targets {
				x := gx + ti*barW
				c := r.Find(2, m, t)
				if !c.ok() {
					fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" fill="%s">×</text>`+"\n", x+barW/2, bottom-4, barColors[t])
					continue
				}
				v := get(c.Median)
				bh := int(float64(bottom-top) * v / maxV)
				fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"><title>%s -M %s: %s %s</title></rect>`+"\n",
					x+1, bottom-bh, barW-2, bh, barColors[t], t, m, short(v), html.EscapeString(unit))
				fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" font-size="10">%s</text>`+"\n", x+barW/2, bottom-bh-3, short(v))
			}
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", x0+left, bottom, x0+panelW, bottom)
	}
	panel(0, "Transactions per second", three, tps, "TPS")
	panel(panelW+40, "Proxy CPU per transaction", proxies, cpu, "µs CPU / txn")
	for i, t := range three {
		x := left + i*170
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", x, h-40, barColors[t], x+18, h-30, t)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">× = failed or not applicable (PgBouncer 1.18 cannot run -M prepared in transaction mode). Load avg %s.</text>`+"\n",
		left, h-10, html.EscapeString(r.Machine.LoadBefore))
	b.WriteString("</svg>\n")
	return b.String()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// short prints 12345 as "12.3k" and small values with one decimal.
func short(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.1f", v)
	}
}

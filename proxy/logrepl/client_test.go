package logrepl

import (
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	cfg, err := Config{Host: "h", User: "u", Database: "d"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Port != 5432 || cfg.Publication != "pgsluice_cache" || cfg.StatusInterval != 10*time.Second || cfg.Logger == nil || cfg.Slot != "" {
		t.Fatalf("defaults: %+v", cfg)
	}
	kept, err := Config{Host: "h", Port: 6000, User: "u", Database: "d", Slot: "mine", Publication: "p_1", StatusInterval: time.Second}.withDefaults()
	if err != nil || kept.Port != 6000 || kept.Slot != "mine" || kept.Publication != "p_1" || kept.StatusInterval != time.Second {
		t.Fatalf("explicit values changed: %+v, %v", kept, err)
	}
}

func TestRandomSlotName(t *testing.T) {
	a, b := randomSlotName(), randomSlotName()
	if a == b || !identRE.MatchString(a) || len(a) != len("pgsluice_")+16 {
		t.Fatalf("slot names %q, %q", a, b)
	}
}

func TestServerMajor(t *testing.T) {
	for v, want := range map[string]int{"15.18 (Debian 15.18-0+deb12u1)": 15, "9.6.24": 9, "17beta1": 17, "": 0, "x": 0} {
		if got := serverMajor(v); got != want {
			t.Errorf("serverMajor(%q) = %d, want %d", v, got, want)
		}
	}
}

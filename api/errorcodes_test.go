package api

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/corralhq/corral/errdefs"
)

// errorClasses are errdefs' classes by name, as the source names them.
var errorClasses = map[string]error{
	"ErrNotFound":            errdefs.ErrNotFound,
	"ErrAlreadyExists":       errdefs.ErrAlreadyExists,
	"ErrInvalidArgument":     errdefs.ErrInvalidArgument,
	"ErrConflict":            errdefs.ErrConflict,
	"ErrFailedPrecondition":  errdefs.ErrFailedPrecondition,
	"ErrNotImplemented":      errdefs.ErrNotImplemented,
	"ErrUnauthenticated":     errdefs.ErrUnauthenticated,
	"ErrTooLarge":            errdefs.ErrTooLarge,
	"ErrUnavailable":         errdefs.ErrUnavailable,
	"ErrInsufficientStorage": errdefs.ErrInsufficientStorage,
}

// apiClasses are this package's own classes (statuses errdefs has no class
// for), which only carry codes of their own.
var apiClasses = map[string]error{
	"errRequestTimeout": errRequestTimeout,
}

// TestErrorCodesDocumented reads every error code the code base can give
// errdefs (errdefs.New, Invalid, NotFound, each class's default, and the
// router's own) and fails unless README.md's "Error codes" table names it
// with the status api/errors.go maps it to.
func TestErrorCodesDocumented(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := readmeErrorCodes(t, string(readme))

	// code → status (0: any, for the router's literal ErrorDetails).
	want := map[string]int{"not_found": statusOf(errdefs.ErrNotFound), "internal": 500}
	for _, class := range errorClasses {
		want[errdefs.Code(class)] = statusOf(class)
	}
	where := map[string]string{}
	for code, pos := range sourceErrorCodes(t, root, want) {
		where[code] = pos
	}
	for code, status := range want {
		got, ok := documented[code]
		switch {
		case !ok:
			t.Errorf("error code %q (%s) is not in README.md's error-code table", code, where[code])
		case status != 0 && got != status:
			t.Errorf("README.md gives error code %q status %d; api/errors.go answers %d", code, got, status)
		}
	}
	for code := range documented {
		if _, ok := want[code]; !ok {
			t.Errorf("README.md's error-code table names %q, which no code produces", code)
		}
	}
}

var readmeRow = regexp.MustCompile("^\\| `([a-z_]+)` \\| ([0-9]{3}) \\|")

// readmeErrorCodes parses the table under "### Error codes".
func readmeErrorCodes(t *testing.T, readme string) map[string]int {
	t.Helper()
	_, section, ok := strings.Cut(readme, "\n### Error codes\n")
	if !ok {
		t.Fatal(`README.md has no "### Error codes" section`)
	}
	if i := strings.Index(section, "\n#"); i >= 0 {
		section = section[:i]
	}
	codes := map[string]int{}
	for _, line := range strings.Split(section, "\n") {
		if m := readmeRow.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[2])
			if _, dup := codes[m[1]]; dup {
				t.Errorf("README.md lists error code %q twice", m[1])
			}
			codes[m[1]] = n
		}
	}
	if len(codes) == 0 {
		t.Fatal("README.md's error-code table has no rows")
	}
	return codes
}

// sourceErrorCodes adds to want every code passed to errdefs.New and
// errdefs.Invalid in the non-test Go files under root, with its class's
// status, and every Code of an ErrorDetail literal (status 0), and returns
// where each was found. A code that is not a string constant fails the
// test: a code must be stable to be documented.
func sourceErrorCodes(t *testing.T, root string, want map[string]int) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	var files []*ast.File
	consts := map[string]string{} // name (unqualified) → value
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".") && p != root) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		files = append(files, f)
		for _, decl := range f.Decls {
			g, ok := decl.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST {
				continue
			}
			for _, spec := range g.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							consts[name.Name], _ = strconv.Unquote(lit.Value)
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	str := func(e ast.Expr) (string, bool) {
		switch x := e.(type) {
		case *ast.BasicLit:
			s, err := strconv.Unquote(x.Value)
			return s, err == nil && x.Kind == token.STRING
		case *ast.Ident:
			s, ok := consts[x.Name]
			return s, ok
		case *ast.SelectorExpr:
			s, ok := consts[x.Sel.Name]
			return s, ok
		}
		return "", false
	}
	where := map[string]string{}
	add := func(code string, status int, pos token.Pos) {
		if old, ok := want[code]; ok && old != status && old != 0 && status != 0 {
			t.Errorf("error code %q has two statuses, %d and %d (%s): one code, one class", code, old, status, fset.Position(pos))
		}
		if _, ok := want[code]; !ok || status != 0 {
			want[code] = status
		}
		if _, ok := where[code]; !ok {
			p := fset.Position(pos)
			rel, _ := filepath.Rel(root, p.Filename)
			where[code] = rel + ":" + strconv.Itoa(p.Line)
		}
	}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.CallExpr:
				sel, ok := x.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				pkg, ok := sel.X.(*ast.Ident)
				if !ok || pkg.Name != "errdefs" {
					return true
				}
				var class error
				var codeArg ast.Expr
				switch sel.Sel.Name {
				case "New":
					if len(x.Args) < 2 {
						return true
					}
					switch cs := x.Args[0].(type) {
					case *ast.SelectorExpr:
						class = errorClasses[cs.Sel.Name]
					case *ast.Ident:
						class = apiClasses[cs.Name]
					}
					if class == nil {
						t.Errorf("%s: errdefs.New with a class this test does not know; add it to errorClasses", fset.Position(x.Pos()))
						return true
					}
					codeArg = x.Args[1]
				case "Invalid":
					if len(x.Args) < 1 {
						return true
					}
					class, codeArg = errdefs.ErrInvalidArgument, x.Args[0]
				default:
					return true
				}
				code, ok := str(codeArg)
				if !ok {
					t.Errorf("%s: error code is not a string constant", fset.Position(x.Pos()))
					return true
				}
				if code == "" {
					code = errdefs.Code(class)
				}
				add(code, statusOf(class), x.Pos())
			case *ast.CompositeLit:
				if sel, ok := x.Type.(*ast.SelectorExpr); ok && sel.Sel.Name == "Error" {
					// errdefs.Error{Class: errdefs.ErrX, Code: ...}
					if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "errdefs" {
						return true
					}
					var class error
					var code string
					for _, el := range x.Elts {
						kv, ok := el.(*ast.KeyValueExpr)
						if !ok {
							continue
						}
						switch k, _ := kv.Key.(*ast.Ident); {
						case k == nil:
						case k.Name == "Class":
							if cs, ok := kv.Value.(*ast.SelectorExpr); ok {
								class = errorClasses[cs.Sel.Name]
							}
						case k.Name == "Code":
							code, _ = str(kv.Value)
						}
					}
					if class != nil && code != "" {
						add(code, statusOf(class), x.Pos())
					}
					return true
				}
				if id, ok := x.Type.(*ast.Ident); !ok || id.Name != "ErrorDetail" {
					return true
				}
				for _, el := range x.Elts {
					if kv, ok := el.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Code" {
							if code, ok := str(kv.Value); ok {
								add(code, 0, kv.Pos())
							}
						}
					}
				}
			}
			return true
		})
	}
	return where
}

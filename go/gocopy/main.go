// Command gocopy writes a package's patched copy under a derived import path, for patch-build's Go plugins.
//
// The running program has the original package P; a Go plugin may not contain P at another version (the
// runtime refuses it), so the fix is built as a copy of patched P under a new path Q. In Q:
//   - every package-level variable is bound to P's by //go:linkname and has no initializer: the copy reads
//     and writes the program's own variables, and loading the plugin initialises nothing;
//   - init functions are dropped (P was initialised when the program started);
//   - types are Q's own, declared as in P: they must keep P's layout, so a changed type is refused;
//   - every function is kept (listed in PatchbuildKeep): the changed ones are what the program jumps to,
//     the unchanged ones are bound back to P's by patch-ctl.
//
// It also refuses what the jump cannot carry: a changed signature, a changed or new global variable, a
// changed type, a changed init. Usage:
//
//	gocopy -path P -orig DIR -patched DIR -files a.go,b.go -exports FILE -out DIR
//
// FILE holds "importpath=exportfile" lines (go list -export -deps) to type-check P. It prints one JSON
// object: {"refused": [[name, reason], ...]}.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/printer"
	"go/token"
	"go/types"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

type pkg struct {
	fset  *token.FileSet
	files map[string]*ast.File
	names []string
}

func parseDir(dir string, names []string) (*pkg, error) {
	p := &pkg{fset: token.NewFileSet(), files: map[string]*ast.File{}, names: names}
	for _, name := range names {
		f, err := parser.ParseFile(p.fset, filepath.Join(dir, name), nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		p.files[name] = f
	}
	return p, nil
}

// text prints a node without its positions: the same code prints the same whatever lines it is on.
func text(node any) string {
	var buf bytes.Buffer
	printer.Fprint(&buf, token.NewFileSet(), node)
	return buf.String()
}

// signature prints a function's type without parameter names: renaming a parameter changes no caller.
func signature(ft *ast.FuncType) string {
	fields := func(list *ast.FieldList) string {
		var parts []string
		if list != nil {
			for _, f := range list.List {
				for i := 0; i < max(1, len(f.Names)); i++ {
					parts = append(parts, text(f.Type))
				}
			}
		}
		return "(" + strings.Join(parts, ", ") + ")"
	}
	tparams := ""
	if ft.TypeParams != nil {
		tparams = "[" + text(ft.TypeParams) + "]"
	}
	return tparams + fields(ft.Params) + " " + fields(ft.Results)
}

func funcKey(fd *ast.FuncDecl) string {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return fd.Name.Name
	}
	return "(" + text(fd.Recv.List[0].Type) + ")." + fd.Name.Name
}

// decls: name -> printed declaration parts, by kind.
type decls struct {
	vars  map[string]string // type + initial value
	types map[string]string
	funcs map[string]string // signature
	inits []string          // bodies of init functions
}

func collect(p *pkg) decls {
	d := decls{vars: map[string]string{}, types: map[string]string{}, funcs: map[string]string{}}
	for _, name := range p.names {
		for _, decl := range p.files[name].Decls {
			switch decl := decl.(type) {
			case *ast.FuncDecl:
				if decl.Name.Name == "init" && decl.Recv == nil {
					d.inits = append(d.inits, text(decl.Body))
				} else {
					d.funcs[funcKey(decl)] = signature(decl.Type)
				}
			case *ast.GenDecl:
				for _, spec := range decl.Specs {
					switch spec := spec.(type) {
					case *ast.TypeSpec:
						d.types[spec.Name.Name] = text(spec)
					case *ast.ValueSpec:
						if decl.Tok != token.VAR {
							continue
						}
						for i, n := range spec.Names {
							v := ""
							if spec.Type != nil {
								v = text(spec.Type)
							}
							if len(spec.Values) == len(spec.Names) {
								v += " = " + text(spec.Values[i])
							} else if len(spec.Values) > 0 {
								v += fmt.Sprintf(" = (%d of) ", i) + text(&ast.CompositeLit{Elts: spec.Values})
							}
							d.vars[n.Name] = v
						}
					}
				}
			}
		}
	}
	return d
}

func refusals(orig, patched decls) [][2]string {
	out := [][2]string{}
	for name, v := range patched.vars {
		if name == "_" {
			continue
		}
		if o, ok := orig.vars[name]; !ok {
			out = append(out, [2]string{name, "new global variable: the running program has no storage for it"})
		} else if o != v {
			out = append(out, [2]string{name, "changed global variable (type or initial value): initialisers are not run again"})
		}
	}
	for name, t := range patched.types {
		if o, ok := orig.types[name]; ok && o != t {
			out = append(out, [2]string{name, "changed type: the running program's values keep the old layout and methods"})
		}
	}
	for name, sig := range patched.funcs {
		if o, ok := orig.funcs[name]; ok && o != sig {
			out = append(out, [2]string{name, "changed signature: callers in the running program pass the old arguments"})
		}
	}
	if strings.Join(orig.inits, "\x00") != strings.Join(patched.inits, "\x00") {
		out = append(out, [2]string{"init", "changed package initialisation: it ran when the program started"})
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// varTypes type-checks the original package for the types of its variables.
func varTypes(p *pkg, path, exports string) (map[string]types.Type, error) {
	table := map[string]string{}
	f, err := os.Open(exports)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		if k, v, ok := strings.Cut(lines.Text(), "="); ok && v != "" {
			table[k] = v
		}
	}
	lookup := func(ip string) (io.ReadCloser, error) {
		if file, ok := table[ip]; ok {
			return os.Open(file)
		}
		return nil, fmt.Errorf("no export data for %s", ip)
	}
	conf := types.Config{Importer: importer.ForCompiler(p.fset, "gc", lookup)}
	var files []*ast.File
	for _, name := range p.names {
		files = append(files, p.files[name])
	}
	checked, err := conf.Check(path, p.fset, files, nil)
	if err != nil {
		return nil, err
	}
	out := map[string]types.Type{}
	for _, name := range checked.Scope().Names() {
		if v, ok := checked.Scope().Lookup(name).(*types.Var); ok {
			out[name] = v.Type()
		}
	}
	return out, nil
}

type edit struct {
	start, end int
	text       string
}

// rewrite makes one file of the copy.
func rewrite(p *pkg, name, path string, vtypes map[string]types.Type, self *types.Package) []byte {
	f := p.files[name]
	src, _ := os.ReadFile(p.fset.File(f.Pos()).Name())
	off := func(pos token.Pos) int { return p.fset.Position(pos).Offset }
	imports := map[string]string{} // import path -> our alias
	qual := func(other *types.Package) string {
		if other.Path() == self.Path() {
			return ""
		}
		if _, ok := imports[other.Path()]; !ok {
			imports[other.Path()] = fmt.Sprintf("patchbuild_import%d", len(imports))
		}
		return imports[other.Path()]
	}
	var edits []edit
	// same number of lines, so the copy's line numbers stay the patched file's
	pad := func(old []byte, repl string) string {
		return repl + strings.Repeat("\n", max(0, bytes.Count(old, []byte("\n"))-strings.Count(repl, "\n")))
	}
	for _, decl := range f.Decls {
		start, end := off(decl.Pos()), off(decl.End())
		switch decl := decl.(type) {
		case *ast.FuncDecl:
			if decl.Name.Name == "init" && decl.Recv == nil {
				edits = append(edits, edit{start, end, pad(src[start:end], "")})
			}
		case *ast.GenDecl:
			if decl.Tok != token.VAR {
				continue
			}
			var b strings.Builder
			for _, spec := range decl.Specs {
				spec := spec.(*ast.ValueSpec)
				var blanks []string
				for _, n := range spec.Names {
					blanks = append(blanks, "_")
					if n.Name == "_" {
						continue
					}
					fmt.Fprintf(&b, "//go:linkname %s %s.%s\nvar %s %s; ", n.Name, path, n.Name, n.Name,
						types.TypeString(vtypes[n.Name], qual))
				}
				if len(spec.Values) > 0 { // never run: keeps the imports the initialiser used in use
					fmt.Fprintf(&b, "func _() { %s = %s }; ", strings.Join(blanks, ", "),
						string(src[off(spec.Values[0].Pos()):off(spec.Values[len(spec.Values)-1].End())]))
				}
				b.WriteString("\n")
			}
			edits = append(edits, edit{start, end, pad(src[start:end], b.String())})
		}
	}
	sort.Slice(edits, func(i, j int) bool { return edits[i].start > edits[j].start })
	out := append([]byte(nil), src...)
	for _, e := range edits {
		out = append(out[:e.start], append([]byte(e.text), out[e.end:]...)...)
	}
	// after the package clause, on its line: import "unsafe" for go:linkname, and what the types need
	var extra strings.Builder
	extra.WriteString(`; import _ "unsafe"`)
	var paths []string
	for ip := range imports {
		paths = append(paths, ip)
	}
	sort.Strings(paths)
	for _, ip := range paths {
		fmt.Fprintf(&extra, "; import %s %q", imports[ip], ip)
	}
	at := off(f.Name.End())
	return append(out[:at], append([]byte(extra.String()), out[at:]...)...)
}

func max(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// keep lists every non-generic function and method, so the linker keeps them in the plugin.
func keep(p *pkg, pkgname string) []byte {
	var names []string
	for _, name := range p.names {
		for _, decl := range p.files[name].Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Name.Name == "_" || (fd.Name.Name == "init" && fd.Recv == nil) || fd.Type.TypeParams != nil {
				continue
			}
			if fd.Recv == nil {
				names = append(names, fd.Name.Name)
				continue
			}
			recv := fd.Recv.List[0].Type
			star := ""
			if s, ok := recv.(*ast.StarExpr); ok {
				recv, star = s.X, "*"
			}
			id, ok := recv.(*ast.Ident)
			if !ok {
				continue // a method of a generic type
			}
			names = append(names, fmt.Sprintf("(%s%s).%s", star, id.Name, fd.Name.Name))
		}
	}
	sort.Strings(names)
	return []byte(fmt.Sprintf("package %s\n\n// PatchbuildKeep keeps every function of the copy in the plugin.\nvar PatchbuildKeep = []any{%s}\n",
		pkgname, strings.Join(names, ", ")))
}

func main() {
	path := flag.String("path", "", "import path of the original package")
	origDir := flag.String("orig", "", "directory of the original package")
	patchedDir := flag.String("patched", "", "directory of the patched package")
	filesFlag := flag.String("files", "", "comma-separated .go files of the package in the build")
	exports := flag.String("exports", "", "file of importpath=exportfile lines")
	out := flag.String("out", "", "directory to write the copy to")
	flag.Parse()
	if err := run(*path, *origDir, *patchedDir, strings.Split(*filesFlag, ","), *exports, *out); err != nil {
		fmt.Fprintf(os.Stderr, "gocopy: %v\n", err)
		os.Exit(2)
	}
}

func run(path, origDir, patchedDir string, names []string, exports, out string) error {
	orig, err := parseDir(origDir, names)
	if err != nil {
		return err
	}
	var patchedNames []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(patchedDir, n)); err == nil {
			patchedNames = append(patchedNames, n)
		}
	}
	patched, err := parseDir(patchedDir, patchedNames)
	if err != nil {
		return err
	}
	refused := refusals(collect(orig), collect(patched))
	result := map[string]any{"refused": refused}
	if len(refused) == 0 {
		vtypes, err := varTypes(orig, path, exports)
		if err != nil {
			return err
		}
		self := types.NewPackage(path, "")
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		pkgname := ""
		for _, name := range patchedNames {
			pkgname = patched.files[name].Name.Name
			if err := os.WriteFile(filepath.Join(out, name), rewrite(patched, name, path, vtypes, self), 0o644); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(out, "zz_patchbuild_keep.go"), keep(patched, pkgname), 0o644); err != nil {
			return err
		}
	}
	return json.NewEncoder(os.Stdout).Encode(result)
}

//! Reading one file's module tree: the `mod` items to follow and the paths that may lead into
//! the crate.
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
};

use proc_macro2::Span;
use syn::{
    Attribute, Expr, ExprLit, ImplItemFn, Item, ItemMod, ItemUse, Lit, Macro, Meta, Token, UseTree,
    punctuated::Punctuated,
    visit::{self, Visit},
};

use super::{Crate, ModPath, Pending, Ref};

pub(super) struct Collector<'a> {
    pub(super) krate: &'a mut Crate,
    pub(super) queue: &'a mut VecDeque<Pending>,
    pub(super) file: &'a Path,
    /// What `#[path]` on a `mod` outside any inline module is relative to.
    pub(super) file_dir: PathBuf,
    /// Where the current module's `mod name;` files live.
    pub(super) child_dir: PathBuf,
    pub(super) inline: bool,
    pub(super) module: ModPath,
    pub(super) test: bool,
    /// A `use` inside a block is the function's, not an import of the module.
    pub(super) blocks: usize,
}

impl Collector<'_> {
    fn reference(&mut self, written: Vec<String>, span: Span) {
        self.krate.refs.push(Ref {
            module: self.module.clone(),
            written,
            file: self.file.to_path_buf(),
            line: span.start().line,
            test: self.test,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &UseTree) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            UseTree::Name(n) => self.use_leaf(prefix, &n.ident, &n.ident),
            UseTree::Rename(r) => self.use_leaf(prefix, &r.ident, &r.rename),
            UseTree::Glob(g) => self.reference(prefix.clone(), g.star_token.span),
            UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &[String], ident: &syn::Ident, name: &syn::Ident) {
        let mut path = prefix.to_vec();
        if ident != "self" {
            path.push(ident.to_string());
        }
        let name = if name == "self" {
            path.last().cloned()
        } else {
            Some(name.to_string())
        };
        if let Some(name) = name
            && self.blocks == 0
            && name != "_"
            && let Some(module) = self.krate.modules.get_mut(&self.module)
        {
            module.imports.insert(name, path.clone());
        }
        self.reference(path, ident.span());
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        let outer = self.test;
        self.test |= cfg_test(item_attrs(item));
        visit::visit_item(self, item);
        self.test = outer;
    }

    fn visit_impl_item_fn(&mut self, f: &'ast ImplItemFn) {
        let outer = self.test;
        self.test |= cfg_test(&f.attrs);
        visit::visit_impl_item_fn(self, f);
        self.test = outer;
    }

    fn visit_block(&mut self, b: &'ast syn::Block) {
        self.blocks += 1;
        visit::visit_block(self, b);
        self.blocks -= 1;
    }

    fn visit_item_use(&mut self, u: &'ast ItemUse) {
        if u.leading_colon.is_none() {
            self.use_tree(&mut Vec::new(), &u.tree);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none()
            && let Some(first) = p.segments.first()
        {
            let written = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.reference(written, first.ident.span());
        }
        visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast Macro) {
        visit::visit_macro(self, m);
        // format!, vec!, assert! and the like take expressions, which syn leaves as tokens.
        if let Ok(args) = m.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated) {
            for arg in &args {
                self.visit_expr(arg);
            }
        }
    }

    fn visit_item_mod(&mut self, m: &'ast ItemMod) {
        let name = m.ident.to_string();
        let path = path_attr(&m.attrs);
        let mut module = self.module.clone();
        module.push(name.clone());
        if let Some((_, items)) = &m.content {
            let child_dir = self.child_dir.join(path.unwrap_or(name));
            self.krate.add_module(module.clone(), self.file, self.test);
            let outer = (
                std::mem::replace(&mut self.module, module),
                std::mem::replace(&mut self.child_dir, child_dir),
                std::mem::replace(&mut self.inline, true),
                std::mem::replace(&mut self.blocks, 0),
            );
            for item in items {
                self.visit_item(item);
            }
            (self.module, self.child_dir, self.inline, self.blocks) = outer;
            return;
        }
        // A file found through `#[path]` holds its own `mod name;` files beside it, as mod.rs does.
        let candidates = match path {
            Some(p) if self.inline => vec![(self.child_dir.join(p), true)],
            Some(p) => vec![(self.file_dir.join(p), true)],
            None => vec![
                (self.child_dir.join(format!("{name}.rs")), false),
                (self.child_dir.join(&name).join("mod.rs"), true),
            ],
        };
        self.queue.push_back(Pending {
            candidates,
            module,
            test: self.test,
            declared: format!("{}:{}", self.file.display(), m.ident.span().start().line),
        });
    }
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// `#[cfg(test)]`, or a `cfg(all(..))` that needs `test`.
pub(super) fn cfg_test(attrs: &[Attribute]) -> bool {
    fn needs_test(meta: &Meta) -> bool {
        match meta {
            Meta::Path(p) => p.is_ident("test"),
            Meta::List(l) if l.path.is_ident("all") => l
                .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                .is_ok_and(|all| all.iter().any(needs_test)),
            _ => false,
        }
    }
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args::<Meta>().is_ok_and(|m| needs_test(&m)))
}

fn path_attr(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

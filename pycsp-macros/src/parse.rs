//! Parsing and validation: from the annotated function to a [`ProcessFn`] model.

use proc_macro2::TokenStream;
use syn::visit::Visit;
use syn::{FnArg, ItemFn, Pat, ReturnType, Type};

/// A function that `#[process]` accepted.
pub(crate) struct ProcessFn {
    /// The original function.
    pub(crate) func: ItemFn,
    /// Parameter patterns and types, in order.
    pub(crate) params: Vec<(Pat, Type)>,
    /// The return type (`()` when omitted).
    pub(crate) ret: Type,
}

/// Parses the attribute arguments and the function, rejecting what cannot cross a process
/// boundary.
pub(crate) fn parse(attr: TokenStream, item: TokenStream, what: &str) -> syn::Result<ProcessFn> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            format!("{what} takes no arguments"),
        ));
    }
    let func: ItemFn = syn::parse2(item)?;
    validate(func, what)
}

/// Checks `func` for the attribute `what` (`#[process]` or `#[pool_fn]`, named in messages).
pub(crate) fn validate(func: ItemFn, what: &str) -> syn::Result<ProcessFn> {
    let sig = &func.sig;
    if let Some(t) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            t,
            format!("a {what} runs in its own OS process; it cannot be async"),
        ));
    }
    if let Some(t) = &sig.constness {
        return Err(syn::Error::new_spanned(
            t,
            format!("a {what} cannot be a const fn"),
        ));
    }
    if let Some(t) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            t,
            format!("a {what} cannot be unsafe: its arguments cross a process boundary as data"),
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            format!("a {what} cannot have an extern ABI"),
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            v,
            format!("a {what} cannot be variadic"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!(
                "a {what} cannot be generic: it is started by name at run time, so its \
                 argument and return types must be concrete"
            ),
        ));
    }
    let mut params = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    format!(
                        "a {what} cannot take `self`: make it a free function and pass the \
                         data it needs as arguments"
                    ),
                ))
            }
            FnArg::Typed(pt) => {
                check_owned(&pt.ty, what)?;
                params.push(((*pt.pat).clone(), (*pt.ty).clone()));
            }
        }
    }
    let ret = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => {
            check_owned(ty, what)?;
            (**ty).clone()
        }
    };
    Ok(ProcessFn { func, params, ret })
}

/// Finds references, lifetimes and `impl Trait` inside a type (for the attribute named by
/// the second field).
struct Borrowed<'w>(Option<syn::Error>, &'w str);

impl<'ast> Visit<'ast> for Borrowed<'_> {
    fn visit_type_reference(&mut self, t: &'ast syn::TypeReference) {
        self.0.get_or_insert_with(|| {
            syn::Error::new_spanned(
                t,
                format!(
                    "a {} parameter or return value cannot be a reference: it is serialized \
                 into another address space; pass an owned value",
                    self.1
                ),
            )
        });
    }
    fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
        self.0.get_or_insert_with(|| {
            syn::Error::new(
                l.span(),
                format!(
                    "a {} parameter or return value cannot borrow (it has a lifetime): it is \
                 serialized into another address space; pass an owned value",
                    self.1
                ),
            )
        });
    }
    fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
        self.0.get_or_insert_with(|| {
            syn::Error::new_spanned(
                t,
                format!(
                    "a {} cannot use `impl Trait`: its types must be concrete to be \
                 serialized; name the type",
                    self.1
                ),
            )
        });
    }
    fn visit_type_bare_fn(&mut self, t: &'ast syn::TypeBareFn) {
        self.0.get_or_insert_with(|| {
            syn::Error::new_spanned(
                t,
                format!(
                    "a {} cannot take or return a function pointer: it means nothing in \
                 another address space",
                    self.1
                ),
            )
        });
    }
}

pub(crate) fn check_owned(ty: &Type, what: &str) -> syn::Result<()> {
    let mut v = Borrowed(None, what);
    v.visit_type(ty);
    match v.0 {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn validate_process(f: ItemFn) -> syn::Result<ProcessFn> {
        validate(f, "#[process]")
    }

    fn err(f: ItemFn) -> String {
        match validate(f, "#[process]") {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn owned_parameters_patterns_and_a_missing_return_type_are_accepted() {
        let m = validate_process(parse_quote!(
            fn f() {}
        ))
        .unwrap();
        assert!(m.params.is_empty());
        let m = validate_process(parse_quote!(
            fn f(mut a: u64, (b, c): (u8, String), v: Vec<u8>) -> Result<u64, E> {
                a
            }
        ))
        .unwrap();
        assert_eq!(m.params.len(), 3);
    }

    #[test]
    fn async_generic_self_and_unsafe_functions_are_rejected() {
        assert!(err(parse_quote!(
            async fn f() {}
        ))
        .contains("cannot be async"));
        assert!(err(parse_quote!(
            fn f<T>(t: T) {}
        ))
        .contains("cannot be generic"));
        assert!(err(parse_quote!(
            fn f(t: u8)
            where
                u8: Copy,
            {
            }
        ))
        .contains("cannot be generic"));
        assert!(err(parse_quote!(
            fn f(&self) {}
        ))
        .contains("cannot take `self`"));
        assert!(err(parse_quote!(
            unsafe fn f() {}
        ))
        .contains("cannot be unsafe"));
        assert!(err(parse_quote!(
            const fn f() {}
        ))
        .contains("const fn"));
        assert!(err(parse_quote!(
            extern "C" fn f() {}
        ))
        .contains("extern ABI"));
    }

    #[test]
    fn references_lifetimes_impl_trait_and_fn_pointers_are_rejected() {
        assert!(err(parse_quote!(
            fn f(s: &str) {}
        ))
        .contains("cannot be a reference"));
        assert!(err(parse_quote!(
            fn f(s: Vec<&'static str>) {}
        ))
        .contains("reference"));
        assert!(err(parse_quote!(
            fn f(s: Cow<'static, str>) {}
        ))
        .contains("lifetime"));
        assert!(err(parse_quote!(
            fn f(s: impl Iterator<Item = u8>) {}
        ))
        .contains("impl Trait"));
        assert!(err(parse_quote!(
            fn f() -> impl Sized {}
        ))
        .contains("impl Trait"));
        assert!(err(parse_quote!(
            fn f(g: fn(u8)) {}
        ))
        .contains("function pointer"));
    }

    #[test]
    fn attribute_arguments_are_rejected() {
        let e = parse(
            quote::quote!(name = "x"),
            quote::quote!(
                fn f() {}
            ),
            "#[process]",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("takes no arguments"));
    }
}

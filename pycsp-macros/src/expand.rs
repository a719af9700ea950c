//! Code generation: the constructor, the table entry, and the child-side runner.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::parse::ProcessFn;

/// Generates the `#[process]` expansion (see the crate docs of `pycsp-core`'s `process`
/// module for what runs where).
pub(crate) fn expand(m: &ProcessFn) -> TokenStream {
    let func = &m.func;
    let attrs = &func.attrs;
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let name_str = ident.to_string();
    let block = &func.block;
    let ret = &m.ret;
    let args: Vec<_> = (0..m.params.len())
        .map(|i| format_ident!("__pycsp_arg{i}"))
        .collect();
    let tys: Vec<_> = m.params.iter().map(|(_, t)| t).collect();
    let pats: Vec<_> = m.params.iter().map(|(p, _)| p).collect();
    // `line!()`/`column!()` at the function's name make the registered name unique even for
    // two processes of one name in different function bodies of a module.
    let name = quote_spanned! {ident.span()=>
        ::core::concat!(::core::module_path!(), "::", #name_str, "@", ::core::line!(), ":", ::core::column!())
    };
    // Point "not serializable" errors at the type that is not.
    let checks = tys
        .iter()
        .map(|t| quote_spanned! {t.span()=> __pycsp_check::<#t>(); });
    let ret_check = quote_spanned! {ret.span()=> __pycsp_check::<#ret>(); };
    // What the error of a returned `Result` says about channels: poison and crashes spread
    // (see `pycsp::AsChannelError`); an error type that cannot say is a compile error, at
    // the return type.
    let spread = quote_spanned! {ret.span()=>
        {
            #[allow(unused_imports)]
            use ::pycsp::__private::{ViaAny as _, ViaResult as _};
            if let ::core::option::Option::Some(__pycsp_err) =
                (&::pycsp::__private::Probe(&__pycsp_ret)).__pycsp_err()
            {
                #[allow(unused_imports)]
                use ::pycsp::__private::{
                    ViaAsChannelError as _, ViaDynError as _, ViaStdError as _, ViaUnknown as _,
                };
                ::pycsp::__private::spread(
                    (&&&&::pycsp::__private::ErrProbe(__pycsp_err)).__pycsp_channel_error(),
                );
            }
        }
    };
    // The body's statements after the guard (not the block itself: a one-expression body
    // would then be a block in return position, which rustc warns about).
    let stmts = &block.stmts;
    quote! {
        #(#attrs)*
        #vis fn #ident(#(#args: #tys),*) -> ::pycsp::Process<#ret> {
            const __PYCSP_NAME: &str = #name;

            #[::pycsp::__private::linkme::distributed_slice(::pycsp::__private::PROCESSES)]
            #[linkme(crate = ::pycsp::__private::linkme)]
            static __PYCSP_ENTRY: ::pycsp::__private::ProcessEntry = ::pycsp::__private::ProcessEntry {
                name: __PYCSP_NAME,
                run: __pycsp_run,
            };

            // A re-executed child runs its process from this constructor, before `main`.
            // SAFETY: `.init_array` entries are plain `extern "C" fn()` pointers called once by
            // the loader; the function only reads the environment and returns unless this
            // process was started as a pycsp child.
            #[used]
            #[unsafe(link_section = ".init_array")]
            static __PYCSP_INIT: extern "C" fn() = {
                extern "C" fn __pycsp_init() {
                    ::pycsp::__private::child_entry()
                }
                __pycsp_init
            };

            #[allow(clippy::needless_pass_by_value, unused_mut)]
            fn __pycsp_body(#(#pats: #tys),*) -> #ret {
                // Dropped after the body's locals and before the parameters: see ReturnGuard.
                let __pycsp_returning = ::pycsp::__private::ReturnGuard;
                #(#stmts)*
            }

            fn __pycsp_run(
                __pycsp_args: &[u8],
            ) -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                let (#(#args,)*): (#(#tys,)*) = ::pycsp::__private::decode_args(__pycsp_args)?;
                let __pycsp_ret = __pycsp_body(#(#args),*);
                #spread
                ::pycsp::__private::retire_deferred();
                ::pycsp::__private::encode_return(&__pycsp_ret)
            }

            #[allow(dead_code)]
            fn __pycsp_types_cross_process_boundaries() {
                fn __pycsp_check<T: ::pycsp::__private::CrossesProcesses>() {}
                #(#checks)*
                #ret_check
            }

            ::pycsp::Process::__new(__PYCSP_NAME, (#(#args,)*))
        }
    }
}

/// What a refused `#[process]` becomes: a function of the same name and parameter types
/// that returns a `Process` and is never run, so that the one error about the signature is
/// not followed by errors at every use of the function. (A function that does not even parse
/// is left as it is: rustc reports its syntax.)
pub(crate) fn process_stub(item: TokenStream) -> TokenStream {
    let Ok(func) = syn::parse2::<syn::ItemFn>(item.clone()) else {
        return item;
    };
    let attrs = func.attrs.iter().filter(|a| a.path().is_ident("doc"));
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let generics = &func.sig.generics;
    let where_clause = &func.sig.generics.where_clause;
    let tys = func.sig.inputs.iter().filter_map(|a| match a {
        syn::FnArg::Typed(pt) => Some(&pt.ty),
        syn::FnArg::Receiver(_) => None,
    });
    let ret = match &func.sig.output {
        syn::ReturnType::Type(_, ty) if crate::parse::check_owned(ty, "").is_ok() => {
            quote!(#ty)
        }
        _ => quote!(()),
    };
    quote! {
        #(#attrs)*
        #[allow(unused_variables, clippy::all)]
        #vis fn #ident #generics(#(_: #tys),*) -> ::pycsp::Process<#ret> #where_clause {
            ::core::unreachable!("a #[process] that did not compile")
        }
    }
}

/// Generates the `#[pool_fn]` expansion: a unit value of the function's name that implements
/// `pycsp::PoolFn` and derefs to the function (so it can still be called), the function
/// itself under a hidden name, its entry in the pool function table, and the pool's worker
/// process (registered by every `#[pool_fn]`; the first is found).
pub(crate) fn expand_pool_fn(m: &ProcessFn) -> TokenStream {
    let func = &m.func;
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let name_str = ident.to_string();
    let ret = &m.ret;
    let tys: Vec<_> = m.params.iter().map(|(_, t)| t).collect();
    let args: Vec<_> = (0..m.params.len())
        .map(|i| format_ident!("__pycsp_arg{i}"))
        .collect();
    // Documentation and lints go on the value users see; everything else stays on the
    // function.
    let (outer, inner): (Vec<_>, Vec<_>) = func.attrs.iter().partition(|a| {
        [
            "doc",
            "allow",
            "warn",
            "deny",
            "expect",
            "deprecated",
            "cfg",
        ]
        .iter()
        .any(|n| a.path().is_ident(n))
    });
    let cfgs = func.attrs.iter().filter(|a| a.path().is_ident("cfg"));
    let mut hidden = func.clone();
    hidden.sig.ident = format_ident!("__pycsp_pool_fn");
    hidden.vis = syn::Visibility::Inherited;
    hidden.attrs = inner.into_iter().cloned().collect();
    let name = quote_spanned! {ident.span()=>
        ::core::concat!(::core::module_path!(), "::", #name_str, "@", ::core::line!(), ":", ::core::column!())
    };
    let checks = tys
        .iter()
        .map(|t| quote_spanned! {t.span()=> __pycsp_check::<#t>(); });
    let ret_check = quote_spanned! {ret.span()=> __pycsp_check::<#ret>(); };
    quote! {
        #(#outer)*
        #[allow(non_camel_case_types, dead_code)]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
        #vis struct #ident;

        #(#cfgs)*
        const _: () = {
            #hidden

            impl ::pycsp::PoolFn for #ident {
                type Args = (#(#tys,)*);
                type Output = #ret;
                const NAME: &'static str = #name;
                fn call((#(#args,)*): Self::Args) -> #ret {
                    __pycsp_pool_fn(#(#args),*)
                }
            }

            impl ::core::ops::Deref for #ident {
                type Target = fn(#(#tys),*) -> #ret;
                fn deref(&self) -> &Self::Target {
                    &(__pycsp_pool_fn as fn(#(#tys),*) -> #ret)
                }
            }

            #[::pycsp::__private::linkme::distributed_slice(::pycsp::__private::POOL_FNS)]
            #[linkme(crate = ::pycsp::__private::linkme)]
            static __PYCSP_POOL_FN: ::pycsp::__private::PoolFnEntry = ::pycsp::__private::PoolFnEntry {
                name: <#ident as ::pycsp::PoolFn>::NAME,
                run: ::pycsp::__private::run_chunk::<#ident>,
            };

            #[::pycsp::__private::linkme::distributed_slice(::pycsp::__private::PROCESSES)]
            #[linkme(crate = ::pycsp::__private::linkme)]
            static __PYCSP_POOL_WORKER: ::pycsp::__private::ProcessEntry = ::pycsp::__private::ProcessEntry {
                name: ::pycsp::__private::POOL_WORKER,
                run: ::pycsp::__private::worker_entry,
            };

            // A re-executed child runs its process (here: a pool worker) from this
            // constructor, before `main`.
            // SAFETY: as for `#[process]`: a plain `extern "C" fn()` called once by the loader,
            // which only reads the environment and returns unless this process is a child.
            #[used]
            #[unsafe(link_section = ".init_array")]
            static __PYCSP_INIT: extern "C" fn() = {
                extern "C" fn __pycsp_init() {
                    ::pycsp::__private::child_entry()
                }
                __pycsp_init
            };

            #[allow(dead_code)]
            fn __pycsp_types_cross_process_boundaries() {
                fn __pycsp_check<T: ::pycsp::__private::CrossesProcesses>() {}
                #(#checks)*
                #ret_check
            }
        };
    }
}

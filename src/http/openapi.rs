//! The OpenAPI 3 description of every endpoint, served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

use super::{admin, health, products, shopper};

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Links from a created campaign (201 of `POST /admin/v1/campaigns`) to the
/// operations that take its id, so clients and schemathesis's stateful phase know
/// where the id goes.
struct CreatedCampaignLinks;

/// (link name, operation's path, method) of every operation that takes a campaign id.
const CAMPAIGN_ID_OPERATIONS: [(&str, &str, &str); 5] = [
    ("GetCampaign", "/admin/v1/campaigns/{id}", "get"),
    ("PauseCampaign", "/admin/v1/campaigns/{id}/pause", "post"),
    ("ResumeCampaign", "/admin/v1/campaigns/{id}/resume", "post"),
    ("ClaimCoupon", "/api/v1/campaigns/{id}/issues", "post"),
    ("ShopperCampaign", "/api/v1/campaigns/{id}", "get"),
];

impl Modify for CreatedCampaignLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(RefOr::T(created)) = openapi
            .paths
            .paths
            .get_mut("/admin/v1/campaigns")
            .and_then(|item| item.post.as_mut())
            .and_then(|create| create.responses.responses.get_mut("201"))
        else {
            return;
        };
        for (name, path, method) in CAMPAIGN_ID_OPERATIONS {
            // A JSON pointer escapes `/` as `~1`.
            let reference = format!("#/paths/{}/{method}", path.replace('/', "~1"));
            // utoipa 5.5's `Link` serializes `operation_ref` under its Rust name, which
            // no client reads: the field goes in under its OpenAPI name instead.
            let link = LinkBuilder::new()
                .parameter("id", "$response.body#/id")
                .extensions(Some(Extensions::from_iter([("operationRef", reference)])))
                .build();
            created.links.insert(name.to_owned(), RefOr::T(link));
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "flashcoupon", description = "First-come coupon issuance for flash events"),
    paths(
        shopper::issue, shopper::campaign, shopper::my_coupons, products::top, products::refresh,
        admin::create, admin::list, admin::get, admin::pause, admin::resume,
        health::live, health::ready, health::metrics, spec
    ),
    modifiers(&AdminToken, &CreatedCampaignLinks)
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn spec() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_campaign_links_to_every_operation_that_takes_its_id() {
        let spec = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let links = spec["paths"]["/admin/v1/campaigns"]["post"]["responses"]["201"]["links"]
            .as_object()
            .expect("links on the 201 of POST /admin/v1/campaigns");
        assert_eq!(links.len(), CAMPAIGN_ID_OPERATIONS.len());
        for (name, link) in links {
            assert_eq!(link["parameters"]["id"], "$response.body#/id", "{name}");
            // The reference is a JSON pointer into this same document.
            let reference = link["operationRef"].as_str().expect(name);
            let pointer = reference.strip_prefix('#').expect(reference);
            assert!(
                spec.pointer(pointer)
                    .is_some_and(|op| op["parameters"][0]["name"] == "id"),
                "{name}: {reference} is no operation with an id"
            );
        }
    }

    /// A new endpoint that takes a campaign id needs its entry in
    /// `CAMPAIGN_ID_OPERATIONS`, or schemathesis only ever calls it with made-up ids.
    #[test]
    fn every_operation_that_takes_a_campaign_id_is_linked() {
        let spec = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut taking_an_id: Vec<(String, String)> = Vec::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let parameters = operation["parameters"].as_array();
                if parameters
                    .is_some_and(|all| all.iter().any(|p| p["name"] == "id" && p["in"] == "path"))
                {
                    taking_an_id.push((path.clone(), method.clone()));
                }
            }
        }
        taking_an_id.sort();
        let mut linked: Vec<(String, String)> = CAMPAIGN_ID_OPERATIONS
            .iter()
            .map(|(_, path, method)| ((*path).to_owned(), (*method).to_owned()))
            .collect();
        linked.sort();
        assert_eq!(taking_an_id, linked);
    }
}

//! `/api/v1/images`: the OS image library. An import is either the image
//! itself as the request body (`application/octet-stream`, streamed to disk,
//! metadata in the query string) or JSON naming a URL for the server to
//! fetch (or a file on the server). Importing content the library already
//! holds answers 200 with the existing image; a new image answers 201.

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use anvil_api_types::Problem;
use anvil_api_types::images::{Image, ImageList, ImageMeta, ImportImage};
use anvil_api_types::installer::{ImageRequest, InstallerImageImport};
use anvil_core::App;
use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::routing::get;
use utoipa::OpenApi;

/// The image routes, merged into the API router.
pub fn router() -> Router<App> {
    Router::new()
        .route("/images", get(list_images).post(import_image))
        .route("/images/{name}", get(get_image).delete(delete_image))
}

#[derive(OpenApi)]
#[openapi(
    paths(list_images, import_image, get_image, delete_image),
    components(schemas(Image, ImageList, ImportImage, InstallerImageImport)),
    tags((name = "images", description = "OS images: import (raw, qcow2; gz, xz, zst), list, delete"))
)]
pub struct ImagesDoc;

/// Every image, by name, with the machines that use it.
#[utoipa::path(get, path = "/images", tag = "images", responses((status = 200, body = ImageList)))]
async fn list_images(State(app): State<App>, Auth(p): Auth) -> ApiResult<axum::Json<ImageList>> {
    Ok(axum::Json(ImageList {
        items: app.list_images(&p).await?,
    }))
}

/// Imports an image: send the file as the body with
/// `Content-Type: application/octet-stream` (name and metadata in the query
/// string), or JSON `{"url": …}` for the server to download, or (admins)
/// `{"path": …}` for a file on the server. The image is converted once to a
/// raw disk stored compressed, addressed by its sha256. Answers 201 with the
/// new image, or 200 with the existing one when the library already holds
/// the same raw disk (whatever name was asked for). A JSON body with
/// `"kind": "installer"` (schema `InstallerImageImport`) registers an
/// installer image instead: kernel, initrd and the source it installs from
/// (`docs/deployment.md`, "Installer images").
#[utoipa::path(post, path = "/images", tag = "images",
    params(ImageMeta),
    request_body(content(
        (ImportImage = "application/json"),
        (Vec<u8> = "application/octet-stream"),
    )),
    responses((status = 201, body = Image), (status = 200, body = Image),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 413, body = Problem, content_type = "application/problem+json"),
              (status = 415, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn import_image(
    State(app): State<App>,
    Auth(p): Auth,
    ApiQuery(meta): ApiQuery<ImageMeta>,
    req: Request,
) -> ApiResult<(StatusCode, axum::Json<Image>)> {
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let (image, created) = if media == "application/octet-stream" {
        let body = Box::pin(req.into_body().into_data_stream());
        app.import_image_upload(&p, meta, body).await?
    } else {
        if meta != ImageMeta::default() {
            return Err(ApiError::malformed(
                "with a JSON body, give the name and metadata in the body, not the query string",
            ));
        }
        // `"kind": "installer"` registers an installer image (installer.rs).
        match ApiJson::<ImageRequest>::from_request(req, &app).await?.0 {
            ImageRequest::Import(body) => app.import_image(&p, body).await?,
            ImageRequest::Installer(body) => app.register_installer_image(&p, body).await?,
        }
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(image)))
}

/// One image.
#[utoipa::path(get, path = "/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 200, body = Image), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_image(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<Image>> {
    Ok(axum::Json(app.get_image(&p, &name).await?))
}

/// Deletes an image and its stored disk. Refused with 409 (type
/// `in-use`, naming the machines) while machines use it.
#[utoipa::path(delete, path = "/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn delete_image(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.delete_image(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
